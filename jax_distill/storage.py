"""Fail in seconds, with one message, when a gs:// path cannot be reached.

Without this, a gs:// path with no reachable endpoint (no network, no credentials, no emulator) ends
minutes later in aiohttp DNS tracebacks that differ between data, model and checkpoint paths, because
gcsfs and tensorstore retry for a long time. Every stage probes each bucket it will use once at start:
a TCP connect to the endpoint, then one bucket listing through gcsfs, both bounded by
`JAX_DISTILL_STORAGE_TIMEOUT_S` (default 20 s). The error names the path, the endpoint tried, the
emulator setting and where credentials would come from.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
from urllib.parse import urlparse

DEFAULT_TIMEOUT_S = 20.0
_reachable: set[str] = set()
_lock = threading.Lock()


class StorageUnreachable(RuntimeError):
    pass


def timeout_s() -> float:
    return float(os.environ.get("JAX_DISTILL_STORAGE_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def endpoint() -> str:
    """The URL gcsfs talks to: STORAGE_EMULATOR_HOST when set (fake-gcs-server, tests), else Google's."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if not host:
        return "https://storage.googleapis.com"
    return host if "://" in host else f"http://{host}"


def credentials_source() -> str:
    """Where gcsfs would take credentials from, in its order of preference (for the error message)."""
    if os.environ.get("FSSPEC_GCS_TOKEN"):
        return f"FSSPEC_GCS_TOKEN={os.environ['FSSPEC_GCS_TOKEN']}"
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        path = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
        return f"GOOGLE_APPLICATION_CREDENTIALS={path}" + ("" if os.path.exists(path) else " (file missing)")
    adc = os.path.expanduser("~/.config/gcloud/application_default_credentials.json")
    if os.path.exists(adc):
        return f"gcloud application-default credentials ({adc})"
    return "none found (no FSSPEC_GCS_TOKEN, GOOGLE_APPLICATION_CREDENTIALS or gcloud login; the GCE metadata server only on Cloud VMs)"


def _connect(url: str, timeout: float) -> None:
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout):
        pass


def _list_bucket(bucket: str) -> None:
    import gcsfs

    gcsfs.GCSFileSystem(skip_instance_cache=True).ls(bucket, detail=False)  # env may point elsewhere now


def probe(path: str, timeout: float | None = None) -> None:
    """Return when the bucket of a gs:// path answers (once per bucket per process); local paths pass.
    Raise StorageUnreachable within about `timeout` seconds otherwise."""
    if not str(path).startswith("gs://"):
        return
    bucket = str(path)[len("gs://") :].split("/", 1)[0]
    with _lock:
        if bucket in _reachable:
            return
    timeout = timeout_s() if timeout is None else timeout
    url = endpoint()

    def fail(why: str) -> StorageUnreachable:
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        return StorageUnreachable(
            f"{path}: storage unreachable ({why}). Tried endpoint {url} "
            f"(STORAGE_EMULATOR_HOST={'unset' if emulator is None else repr(emulator)}); "
            f"credentials: {credentials_source()}. Probe timeout {timeout:g}s (JAX_DISTILL_STORAGE_TIMEOUT_S)."
        )

    future: concurrent.futures.Future = concurrent.futures.Future()
    phase = ["resolving and connecting to " + (urlparse(url).netloc or url)]

    def check():
        try:
            _connect(url, timeout)  # DNS resolution is not bounded by socket timeouts: hence the thread
            phase[0] = f"listing bucket {bucket!r}"
            _list_bucket(bucket)
            future.set_result(None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            future.set_exception(e)

    # a daemon thread: a client stuck in retries must not keep the process alive at exit
    threading.Thread(target=check, name="storage-probe", daemon=True).start()
    try:
        future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise fail(f"{phase[0]} did not answer") from None
    except Exception as e:  # noqa: BLE001 - any client error means the path cannot be used
        raise fail(f"{phase[0]} failed: {type(e).__name__}: {e}") from None
    with _lock:
        _reachable.add(bucket)
