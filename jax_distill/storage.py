"""Storage, local or gs://: fail in seconds when a gs:// path cannot be reached, and one set of file
calls (below) through which stages read and write either kind of path alike.

Without the probe, a gs:// path with no reachable endpoint (no network, no credentials, no emulator) ends
minutes later in aiohttp DNS tracebacks that differ between data, model and checkpoint paths, because
gcsfs and tensorstore retry for a long time. Every stage probes each bucket it will use once at start:
a TCP connect to the endpoint, then one bucket listing through gcsfs, both bounded by
`JAX_DISTILL_STORAGE_TIMEOUT_S` (default 20 s). The error names the path, the endpoint tried, the
emulator setting and where credentials would come from.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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


# ----------------------------------------------------------------------------- files, local or gs://
# The trace stages, evaluate and report read and write through these calls, so a gs:// folder works as a
# local one. Atomicity: a local file is written to a temporary name and renamed into place; a gs:// object
# is uploaded in one request, and GCS makes an object visible only once its upload is complete (readers
# see the previous object or the new one whole), so no rename is needed there. Listings are never cached
# (gcsfs caches them by default): other hosts and Ray actors write the same folders meanwhile.

_filesystems: dict[tuple[str, int], object] = {}


def is_gcs(path) -> bool:
    return str(path).startswith("gs://")


def gcs():
    """One gcsfs client per endpoint and process (a forked worker gets its own: gcsfs's loop is not fork-safe)."""
    import gcsfs

    key = (endpoint(), os.getpid())
    with _lock:
        if key not in _filesystems:
            _filesystems[key] = gcsfs.GCSFileSystem(use_listings_cache=False, skip_instance_cache=True)
        return _filesystems[key]


def _key(path: str) -> str:
    return str(path)[len("gs://") :]


def exists(path) -> bool:
    return gcs().exists(_key(path)) if is_gcs(path) else os.path.exists(path)


def isdir(path) -> bool:
    """A local directory, or a gs:// prefix holding at least one object."""
    return gcs().isdir(_key(path)) if is_gcs(path) else os.path.isdir(path)


def isfile(path) -> bool:
    return gcs().isfile(_key(path)) if is_gcs(path) else os.path.isfile(path)


def makedirs(path) -> None:
    """A local directory (and its parents); nothing on gs://, where folders are name prefixes."""
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> list[str]:
    """Paths matching a glob, sorted; gs:// ones keep their scheme."""
    if is_gcs(pattern):
        return sorted("gs://" + p for p in gcs().glob(_key(pattern)))
    import glob as _glob

    return sorted(_glob.glob(pattern, recursive=True))  # "**": any depth, as gcsfs globs it


def size(path) -> int:
    return gcs().size(_key(path)) if is_gcs(path) else os.path.getsize(path)


def read_bytes(path) -> bytes:
    if is_gcs(path):
        return gcs().cat_file(_key(path))
    with open(path, "rb") as f:
        return f.read()


def remove(path) -> None:
    if is_gcs(path):
        gcs().rm_file(_key(path))
    else:
        os.remove(path)


def write_atomic(path, data: str | bytes) -> None:
    """Write a whole file so that no reader ever sees part of it (see the section's note)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if is_gcs(path):
        gcs().pipe_file(_key(path), data)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create_exclusive(path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (then False), atomically: a local hard link of a
    complete temporary file, or a gs:// upload with ifGenerationMatch=0 (refused when an object exists)."""
    if is_gcs(path):
        try:
            gcs().pipe_file(_key(path), data, mode="create")
        except FileExistsError:
            return False
        return True
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)
    return True


def remove_if_unchanged(path, data: bytes) -> bool:
    """Remove `path` only while it still holds `data` (False when it is gone or holds something else).
    Local: rename it aside, compare, and link it back if another writer replaced it meanwhile; gs://: a
    delete conditioned on the generation that was read (GCS refuses it when the object was replaced)."""
    if is_gcs(path):
        fs = gcs()
        try:
            generation = fs.info(_key(path))["generation"]
            if fs.cat_file(_key(path)) != data:
                return False
            bucket, key = _key(path).split("/", 1)
            fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=generation)
        except FileNotFoundError:
            return False
        return True
    moved = f"{path}.stale{os.getpid()}"
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return False
    with open(moved, "rb") as f:
        same = f.read() == data
    if not same:
        with contextlib.suppress(FileExistsError):
            os.link(moved, path)  # another writer's file: back in place (never over a newer one)
    os.remove(moved)
    return same


def remove_tree(path) -> None:
    """A local directory and what it holds, or every gs:// object under the prefix; none there is fine."""
    if is_gcs(path):
        fs = gcs()
        if fs.exists(_key(path)):
            fs.rm(_key(path), recursive=True)
        return
    import shutil

    shutil.rmtree(path, ignore_errors=True)
