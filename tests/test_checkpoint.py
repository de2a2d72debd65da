"""Checkpointer: state + Grain iterator round trip (local and gs:// on fake-gcs-server), keep-last-K,
half-written checkpoints never picked."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gcs_emulator import serving

from jax_distill.models.layers import Adapted, LoRA
from jax_distill.parallel.sharding import make_mesh
from jax_distill.training import checkpoint
from jax_distill.training.lora import partition


def _state(seed):
    mesh = make_mesh(2, 4, 1)
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", None))
    k = jax.random.key(seed)
    params = {"w": Adapted(jnp.ones((8, 4)), LoRA(jax.random.normal(k, (8, 3)), jnp.zeros((3, 4)), 0.5, 0.1)),
              "norm": jnp.ones((4,))}
    trainable, _ = partition(params, lambda x: isinstance(x, LoRA))
    state = {"step": jnp.asarray(seed, jnp.int32), "params": trainable, "rng": jax.random.key_data(k)}
    state["params"]["w"].lora.a = jax.device_put(state["params"]["w"].lora.a, sh)
    return state


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def _roundtrip(directory):
    ckpt = checkpoint.Checkpointer(directory, every=1, keep=2)
    it = _iterator()
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(step), it)
    expected_next = next(it)
    ckpt.close()
    ckpt = checkpoint.Checkpointer(directory, every=1, keep=2)
    assert ckpt.latest_step() == 3
    assert ckpt.manager.all_steps() == [2, 3]  # keep-last-K
    fresh = _iterator()
    like = _state(0)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    restored = ckpt.restore(3, abstract, fresh)
    want = _state(3)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert restored["params"]["w"].base is None and restored["params"]["w"].lora.scale == 0.5  # LoRA only
    assert restored["params"]["w"].lora.a.sharding == want["params"]["w"].lora.a.sharding
    np.testing.assert_array_equal(next(fresh), expected_next)  # the data stream continues exactly
    ckpt.close()


def test_local_roundtrip_and_half_written_checkpoint_ignored(tmp_path):
    _roundtrip(str(tmp_path / "ckpt"))
    # a crash mid-save leaves a tmp directory (and, on GCS, no commit marker): never picked
    half = tmp_path / "ckpt" / "7.orbax-checkpoint-tmp-1234"
    (half / "state").mkdir(parents=True)
    (half / "state" / "garbage").write_bytes(b"\0" * 10)
    assert checkpoint.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=2).latest_step() == 3


def test_relative_directory_commits_and_restores(tmp_path, monkeypatch):
    """A relative checkpoint dir (as `--config.train.run_dir=runs/x` gives) saves, commits and resumes."""
    monkeypatch.chdir(tmp_path)
    _roundtrip("runs/x/checkpoints")
    assert (tmp_path / "runs" / "x" / "checkpoints" / "3").is_dir()


def test_wait_raises_when_the_last_save_did_not_commit(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=2)
    ckpt.save(1, _state(1), _iterator())
    ckpt.wait()
    ckpt.last_saved = 2  # as if step 2's async save had failed in the background
    with pytest.raises(RuntimeError, match="checkpoint of step 2 did not commit"):
        ckpt.wait()
    ckpt.close()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("gcs")) as server:
        yield server


def test_gcs_roundtrip(gcs):
    _roundtrip(f"gs://{gcs.bucket}/ckpt-roundtrip")


def _save_three(directory):
    ckpt = checkpoint.Checkpointer(directory, every=1, keep=3)
    it = _iterator()
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(step), it)
    ckpt.close()


def _newest_intact(directory):
    ckpt = checkpoint.Checkpointer(directory, every=1, keep=3)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state(0))
    found = ckpt.restore_newest(abstract, _iterator())
    steps = ckpt.manager.all_steps()
    ckpt.close()
    return found, steps


def test_gcs_damaged_step_is_set_aside(gcs):
    """On gs:// too: a step whose state objects are gone is renamed <step>.damaged and the previous
    step restores."""
    import gcsfs

    directory = f"gs://{gcs.bucket}/ckpt-damaged"
    _save_three(directory)
    fs = gcsfs.GCSFileSystem()
    fs.rm(f"{gcs.bucket}/ckpt-damaged/3/state", recursive=True)
    (step, state), steps = _newest_intact(directory)
    assert step == 2 and steps == [1, 2] and int(state["step"]) == 2
    fs.invalidate_cache()
    assert fs.exists(f"{gcs.bucket}/ckpt-damaged/3.damaged/data")


def test_other_config_is_not_damage(tmp_path):
    """A checkpoint holding other arrays (e.g. another lora.rank in the same dir) fails as a config
    error and is left as it is."""
    _save_three(str(tmp_path / "ckpt"))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=3)
    like = _state(0)
    like["params"]["w"].lora.a = jnp.zeros((8, 5))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
    with pytest.raises(ValueError, match=r"checkpoint step 3 in .* holds other arrays than this config trains "
                                         r"\(params\.w\.lora\.a\)"):
        ckpt.restore_newest(abstract, _iterator())
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1", "2", "3"]
