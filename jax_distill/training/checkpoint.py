"""Orbax checkpoints of the train state plus the Grain iterator, on a local path or gs://.

One checkpoint = the state flattened to {"params.layers.q_proj.lora.a": array, ...} (LoRA leaves only
in LoRA mode; the frozen base is reloaded from the student folder) + the data iterator's state as
grain's per-process JSON. Orbax writes each step into a temporary directory and publishes it only
when complete (rename locally, a commit marker on GCS), so `latest_step()` never returns a half-written
checkpoint and rerunning the same command resumes from the last complete one. Saves are async: the
train loop continues while arrays are written; the iterator state is captured at save time.

Resume takes the newest step that restores completely (every array, all finite, and the iterator state).
A step that does not (a truncated or missing file, unreadable metadata, NaN weights) is damage, not an
outage: the caller probes the storage first, so restores are never retried. The damaged step is named
with the file at fault and renamed `<step>.damaged` (orbax no longer lists it; kept for inspection),
and the next older step is tried.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jax_distill.training.lora import path_str
from jax_distill.training.state import all_finite

log = logging.getLogger(__name__)


class Damaged(Exception):
    """A checkpoint step that cannot be restored although its storage answers."""

    def __init__(self, step: int, file: str, why: str):
        super().__init__(f"checkpoint step {step} is damaged: {file}: {why}")
        self.step, self.file = step, file


def flatten(state: Any) -> dict[str, Any]:
    """{dotted path: leaf} (None placeholders vanish)."""
    return {path_str(p).replace("/", "."): x for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def unflatten(flat: dict[str, Any], like: Any) -> Any:
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return treedef.unflatten([flat[path_str(p).replace("/", ".")] for p, _ in paths])


class IteratorSnapshot:
    """The data iterator's state frozen at save time, in the form grain's orbax handler writes (JSON
    bytes); on restore it hands the decoded state to the live iterator. Async saves then never race
    with the training loop advancing the iterator."""

    def __init__(self, iterator, state: Any = None):
        self.iterator = iterator
        self.state = state

    def get_state(self) -> bytes:
        state = self.state
        return state if isinstance(state, bytes) else json.dumps(state, indent=1).encode()

    def set_state(self, raw: bytes) -> None:
        try:
            state = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = raw
        self.iterator.set_state(state)

    def start_prefetch(self) -> None:
        start = getattr(self.iterator, "start_prefetch", None)
        if start is not None:
            start()


class Checkpointer:
    """CheckpointManager for (state, data iterator): save every N steps, keep the last K."""

    def __init__(self, directory: str, every: int, keep: int, async_save: bool = True, retries: int = 3):
        self.directory = str(directory).rstrip("/")
        if "://" not in self.directory:  # orbax needs absolute local paths (a relative one never commits)
            self.directory = os.path.abspath(self.directory)
        self.last_saved: int | None = None
        self.every = every
        self.retries = retries
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1),
            max_to_keep=keep if keep > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, iterator, *, force: bool = False) -> bool:
        """Start an (async) save of `state` and the iterator position; True if one was started."""
        snapshot = IteratorSnapshot(iterator, iterator.get_state())
        args = ocp.args.Composite(state=ocp.args.StandardSave(flatten(state)), data=grain.checkpoint.CheckpointSave(snapshot))
        started = self._retry(f"save step {step}", lambda: self.manager.save(step, args=args, force=force))
        if started:
            self.last_saved = step
        return started

    def restore(self, step: int, abstract_state: Any, iterator) -> Any:
        """The state saved at `step` (placed with the shardings of `abstract_state`'s leaves), every array
        read and finite; the iterator is moved to the saved position. Damaged if any of that fails;
        ValueError if the step holds a different tree (another config wrote it: not damage)."""
        target = flatten(abstract_state)
        state_dir = epath.Path(self.directory) / str(step) / "state"
        saved = self._read(step, "state", lambda: self.manager.item_metadata(step)["state"])
        if saved is None:
            raise Damaged(step, f"{state_dir} (missing)", "no state item")
        _check_same_tree(step, self.directory, {k: (v.shape, v.dtype) for k, v in saved.items()}, target)
        _check_same_hosts(step, epath.Path(self.directory) / str(step) / "data")
        state = self._read(step, "state", lambda: self._restore_item(step, "state", ocp.args.StandardRestore(target)))
        bad = sorted(k for k, x in state.items() if not bool(all_finite(x)))  # arrays may sit on different devices
        if bad:
            raise Damaged(step, str(state_dir), f"non-finite values in {', '.join(bad)}")
        data = grain.checkpoint.CheckpointRestore(IteratorSnapshot(iterator))
        self._read(step, "data", lambda: self._restore_item(step, "data", data))
        return unflatten(state, abstract_state)

    def restore_newest(self, abstract_state: Any, iterator) -> tuple[int, Any] | None:
        """(step, state) of the newest step that restores (see `restore`), the iterator at its position;
        each damaged newer step is reported and set aside. None when no step restores."""
        for step in reversed(self.manager.all_steps()):
            try:
                return step, self.restore(step, abstract_state, iterator)
            except Damaged as e:
                aside = self.set_aside(step)
                log.error("%s. Renamed to %s for inspection; trying the previous checkpoint", e, aside)
        return None

    def set_aside(self, step: int) -> str:
        """Rename step `step` to `<step>.damaged` (orbax lists integer names only); returns the new path."""
        folder = epath.Path(self.directory) / str(step)
        aside = folder.parent / f"{step}.damaged"
        n = 1
        while aside.exists():
            aside, n = folder.parent / f"{step}.damaged.{n}", n + 1
        folder.rename(aside)
        self.manager.reload()
        return str(aside)

    def _restore_item(self, step: int, item: str, args) -> Any:
        return self.manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]

    def _read(self, step: int, item: str, fn) -> Any:
        """fn() reading `item` of `step`; any failure is Damaged naming the file (storage answered: probed)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - whatever orbax, tensorstore or grain raise
            raise Damaged(step, _damaged_file(epath.Path(self.directory) / str(step) / item, e), _brief(e)) from e

    def wait(self) -> None:
        """Block until async saves end, and check on storage that the last one committed (an async
        failure must not pass for a saved checkpoint)."""
        self._retry("finish saving", self.manager.wait_until_finished)
        if self.last_saved is not None:
            self.manager.reload()
            if self.last_saved not in self.manager.all_steps():
                raise RuntimeError(f"checkpoint of step {self.last_saved} did not commit in {self.directory}")

    def close(self) -> None:
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()

    def _retry(self, what: str, fn):
        """Storage outages while saving (e.g. GCS unreachable) get a few retries with backoff, then a clear
        error."""
        delay = 2.0
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as e:
                if attempt == self.retries:
                    raise RuntimeError(
                        f"checkpoint {what} at {self.directory} failed after {self.retries + 1} attempts: {e}. "
                        "Rerun the same command to resume from the latest complete checkpoint."
                    ) from e
                log.warning("checkpoint %s at %s failed (%s); retrying in %.0fs", what, self.directory, e, delay)
                time.sleep(delay)
                delay *= 2


def _check_same_hosts(step: int, data_dir: epath.Path) -> None:
    """ValueError when the step's data positions were saved by another number of hosts (grain keeps one
    file per host, process_<i>-of-<n>.json): a rerun on a changed slice, which must not pass for damage
    (the step would be set aside) nor silently restart the data."""
    counts = sorted({int(m.group(1)) for f in (data_dir.iterdir() if data_dir.exists() else [])
                     if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f.name))})
    if counts and counts != [jax.process_count()]:
        raise ValueError(f"checkpoint step {step} in {data_dir.parent.parent} was saved by {counts[0]} host(s), this "
                         f"run has {jax.process_count()}: rerun on {counts[0]} host(s) (each host's data position is "
                         "its own), or start another checkpoint.dir")


def _check_same_tree(step: int, directory: str, saved: dict[str, tuple], target: dict[str, Any]) -> None:
    """ValueError when the checkpoint's arrays (names, shapes, dtypes) are not the run's: a changed config
    (e.g. lora.rank) in the same checkpoint.dir, which must not pass for damage."""
    want = {k: (tuple(x.shape), np.dtype(x.dtype)) for k, x in target.items()}
    got = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in saved.items()}
    if got != want:
        diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise ValueError(f"checkpoint step {step} in {directory} holds other arrays than this config trains "
                         f"({', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}): a different config wrote it; "
                         "use another checkpoint.dir (or train.run_dir)")


def _damaged_file(item: epath.Path, error: BaseException) -> str:
    """The file at fault: the longest path under `item` the error names, else a JSON file there that does
    not parse (metadata, iterator state), else `item` itself (marked missing when it is)."""
    text = " ".join(str(e) for e in _chain(error))
    named = re.findall(re.escape(str(item)) + r"[^\s\"',\]]*", text)
    if named:
        return max(named, key=len)
    if not item.exists():
        return f"{item} (missing)"
    for f in sorted(item.iterdir()):
        if f.is_file() and (f.suffix == ".json" or f.name.startswith("_")):
            try:
                json.loads(f.read_bytes())
            except ValueError:
                return str(f)
    return str(item)


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _brief(error: BaseException) -> str:
    """The error's type and first line, cut short (tensorstore appends kilobytes of spec)."""
    line = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {line[:300]}"
