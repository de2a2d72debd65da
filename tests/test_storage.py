"""Unreachable gs:// storage fails in seconds with one message naming the path and what was tried."""

import socket
import subprocess
import sys
import time

import pytest

from jax_distill import storage


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host", ["http://127.0.0.1:{port}", "http://no-such-host.invalid:4443"])
def test_unreachable_endpoint_fails_within_the_probe_timeout(monkeypatch, host):
    url = host.format(port=_closed_port())
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    start = time.monotonic()
    with pytest.raises(storage.StorageUnreachable) as e:
        storage.probe("gs://bucket-x/models/student", timeout=3)
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert msg.startswith("gs://bucket-x/models/student: storage unreachable") and url in msg
    assert "credentials:" in msg and "STORAGE_EMULATOR_HOST=" in msg


def test_listing_that_hangs_is_bounded(monkeypatch, tmp_path):
    # an endpoint that accepts connections but never answers (a black-holed proxy)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.setenv("FSSPEC_GCS_TOKEN", "anon")
    start = time.monotonic()
    with pytest.raises(storage.StorageUnreachable, match="did not answer"):
        storage.probe("gs://silent-bucket/x", timeout=3)
    assert time.monotonic() - start < 10
    server.close()


def test_reachable_emulator_passes_and_local_paths_are_not_probed(monkeypatch, tmp_path):
    from gcs_emulator import FakeGCS

    server = FakeGCS(tmp_path / "gcs").start()
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        storage.probe("/no/such/local/path")  # local paths are checked where they are opened
        storage.probe(f"gs://{server.bucket}/anything", timeout=10)
    finally:
        server.stop()


def test_a_hung_probe_does_not_keep_the_process_alive():
    code = (
        "import socket, os; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8);"
        "os.environ['STORAGE_EMULATOR_HOST'] = 'http://127.0.0.1:%d' % s.getsockname()[1];"
        "os.environ['FSSPEC_GCS_TOKEN'] = 'anon'; os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false';"
        "from jax_distill import storage\n"
        "try:\n    storage.probe('gs://b/x', timeout=2)\nexcept storage.StorageUnreachable as e:\n    print('FAILED FAST')"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "FAILED FAST" in out.stdout and time.monotonic() - start < 30, out.stderr
