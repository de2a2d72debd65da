"""One writer per output folder part: a stage holds `{out_dir}/{prefix}.lock` while it writes chunks.

Two runs writing the same prefix would delete each other's chunks in flight (store.clean_partial) and
list the same ids twice, so the second is refused at once, naming the folder and the holder. The lock
file holds the holder's host and pid; a lock whose holder is gone (same host, no such pid, e.g. a
SIGKILLed run) is stale and taken over with a warning. A holder on another host cannot be checked from
here: its lock stays until that run ends or someone removes the file. Shards (`shard=i/n`) lock their own
prefix, so shards sharing a folder run together. On gs:// the lock is an object created with
ifGenerationMatch=0 (GCS refuses it while one exists) and removed by a delete conditioned on its generation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from typing import Iterator

from jax_distill import storage

log = logging.getLogger(__name__)


class FolderLocked(RuntimeError):
    """Another run holds the lock of this output folder part."""


def _read(path: str) -> tuple[dict | None, bytes]:
    """The holder a lock file names and its bytes; (None, b"") when there is no lock (released meanwhile)."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        return None, b""
    return json.loads(data), data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(holder: dict) -> bool:
    return holder["host"] == socket.gethostname() and not _alive(holder["pid"])


@contextlib.contextmanager
def hold(out_dir: str, prefix: str, stage: str) -> Iterator[dict]:
    """Hold `{out_dir}/{prefix}.lock` for the body; FolderLocked at once when a live run holds it."""
    path = os.path.join(out_dir, f"{prefix}.lock")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "stage": stage}
    mine = json.dumps(me).encode("utf-8")
    # created only where none exists, complete at once (storage.create_exclusive: a hard link, or a gs://
    # upload that GCS refuses when the object exists)
    while not storage.create_exclusive(path, mine):
        holder, data = _read(path)
        if holder is None:
            continue
        if not _stale(holder):
            raise FolderLocked(
                f"{out_dir}: another {holder.get('stage', stage)} run writes {prefix} here (host {holder['host']}, "
                f"pid {holder['pid']}, since {holder.get('since', '?')}; lock {path}). Wait for it to finish, or "
                f"give this run its own out_dir or shard; remove the lock only if that run is gone.")
        log.warning("%s: taking over the stale lock %s of %s pid %s (no such process)", out_dir, path,
                    holder["host"], holder["pid"])
        storage.remove_if_unchanged(path, data)  # unless another run replaced it since it was read
    try:
        yield me
    finally:
        storage.remove_if_unchanged(path, mine)
