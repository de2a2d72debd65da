"""Orbax checkpoints of the train state plus the Grain iterator, on a local path or gs://.

One checkpoint = the state flattened to {"params.layers.q_proj.lora.a": array, ...} (LoRA leaves only
in LoRA mode; the frozen base is reloaded from the student folder) + the data iterator's state as
grain's per-process JSON. Orbax writes each step into a temporary directory and publishes it only
when complete (rename locally, a commit marker on GCS), so `latest_step()` never returns a half-written
checkpoint and rerunning the same command resumes from the last complete one. Saves are async: the
train loop continues while arrays are written; the iterator state is captured at save time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jax_distill.training.lora import path_str

log = logging.getLogger(__name__)


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
        """The state saved at `step` (placed with the shardings of `abstract_state`'s leaves); the
        iterator is moved to the saved position."""
        target = flatten(abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(IteratorSnapshot(iterator))
        )
        restored = self._retry(f"restore step {step}", lambda: self.manager.restore(step, args=args))
        return unflatten(restored["state"], abstract_state)

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
        """Storage outages (e.g. GCS unreachable) get a few retries with backoff, then a clear error."""
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
