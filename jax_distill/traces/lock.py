"""One writer per output folder part: a stage holds `{out_dir}/{prefix}.lock` while it writes chunks.

Two runs writing the same prefix would delete each other's chunks in flight (store.clean_partial) and
list the same ids twice, so the second is refused at once, naming the folder and the holder. The lock
file holds the holder's host and pid; a lock whose holder is gone (same host, no such pid, e.g. a
SIGKILLed run) is stale and taken over with a warning. A holder on another host cannot be checked from
here: its lock stays until that run ends or someone removes the file. Shards (`shard=i/n`) lock their own
prefix, so shards sharing a folder run together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from typing import Iterator

log = logging.getLogger(__name__)


class FolderLocked(RuntimeError):
    """Another run holds the lock of this output folder part."""


def _read(path: str) -> dict | None:
    """The holder a lock file names; None when there is no lock (released meanwhile)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


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


def _take_over(path: str, holder: dict) -> None:
    """Remove a stale lock, unless another run replaced it since it was read (then it goes back)."""
    moved = f"{path}.stale{os.getpid()}"
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return  # another run took it over first
    if _read(moved) != holder:
        with contextlib.suppress(FileExistsError):
            os.link(moved, path)  # a live run's lock: back in place (never over a newer one)
    os.remove(moved)


@contextlib.contextmanager
def hold(out_dir: str, prefix: str, stage: str) -> Iterator[dict]:
    """Hold `{out_dir}/{prefix}.lock` for the body; FolderLocked at once when a live run holds it."""
    path = os.path.join(out_dir, f"{prefix}.lock")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "stage": stage}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(me, f)
    try:
        while True:
            try:
                os.link(tmp, path)  # atomic and never over an existing lock; the holder is complete at once
                break
            except FileExistsError:
                pass
            holder = _read(path)
            if holder is None:
                continue
            if not _stale(holder):
                raise FolderLocked(
                    f"{out_dir}: another {holder.get('stage', stage)} run writes {prefix} here (host {holder['host']}, "
                    f"pid {holder['pid']}, since {holder.get('since', '?')}; lock {path}). Wait for it to finish, or "
                    f"give this run its own out_dir or shard; remove the lock only if that run is gone.")
            log.warning("%s: taking over the stale lock %s of %s pid %s (no such process)", out_dir, path,
                        holder["host"], holder["pid"])
            _take_over(path, holder)
    finally:
        os.remove(tmp)
    try:
        yield me
    finally:
        if _read(path) == me:
            os.remove(path)
