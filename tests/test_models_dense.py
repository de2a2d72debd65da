"""Llama and Qwen3 students against transformers: load, logits, export, bad checkpoints."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_tiny
from jax_distill.models import CheckpointError, from_pretrained

FAMILIES = ["llama", "qwen3"]


def jax_logits(model, tokens, positions, segments):
    logits, _ = jax.jit(model.forward)(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    return np.asarray(logits)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    family = request.param
    folder = hf_tiny.save_tiny_model(family, tmp_path_factory.mktemp(family))
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return family, folder, reference


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_fp32_logits_match_transformers(tiny, left):
    family, folder, reference = tiny
    model = from_pretrained(folder)
    assert model.family == family
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [13, 7, 10], seed=1, left=left)
    ours = jax_logits(model, tokens, positions, segments)
    theirs = hf_tiny.torch_logits(reference, tokens, positions, mask)
    real = mask.astype(bool)
    np.testing.assert_array_less(np.abs(ours - theirs)[real].max(), 1e-4)


def test_bf16_load_within_bf16_tolerance(tiny):
    family, folder, reference = tiny
    model = from_pretrained(folder, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(model.params))
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [11, 6], seed=2)
    ours = jax_logits(model, tokens, positions, segments)
    theirs = hf_tiny.torch_logits(reference, tokens, positions, mask)
    real = mask.astype(bool)
    scale = np.abs(theirs[real]).max()
    assert np.abs(ours - theirs)[real].max() < 0.05 * scale
    # the same tokens win almost everywhere
    assert (ours.argmax(-1) == theirs.argmax(-1))[real].mean() > 0.9


def test_round_trip_through_transformers(tiny, tmp_path):
    family, folder, reference = tiny
    model = from_pretrained(folder)
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [9, 12], seed=3)
    theirs = hf_tiny.torch_logits(reference, tokens, positions, mask)
    out, reloaded, _ = hf_tiny.check_export(model, folder, tmp_path / "export", theirs, tokens, positions, mask)
    assert type(reloaded) is type(reference)
    import transformers

    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == hf_tiny.CHAT_TEMPLATE


def test_sharded_index_loads_onto_mesh(tmp_path):
    """A sharded checkpoint (index.json) loads straight onto an fsdp x tensor mesh."""
    from jax_distill.parallel.sharding import ShardingRules, make_mesh

    folder = hf_tiny.save_tiny_model("llama", tmp_path / "src")
    model = from_pretrained(folder)
    from jax_distill.models import hf_io

    tensors = hf_io.iter_hf_tensors(model.params, model.module.weight_map(model.config))
    sharded = hf_io.save_folder(tmp_path / "sharded", model.config.to_hf(), tensors, folder, max_shard_bytes=200_000)
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 2
    n = len(jax.devices())
    mesh = make_mesh(data=1, fsdp=-1, tensor=2 if n % 2 == 0 and n > 1 else 1)
    placed = from_pretrained(sharded, rules=ShardingRules(mesh))
    q = placed.params["layers"]["q_proj"]
    assert q.sharding.mesh.shape == mesh.shape
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(placed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- bad input


def _copy(folder, dst, edit_tensors=None, edit_config=None):
    dst.mkdir()
    tensors = load_file(folder / "model.safetensors")
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    if edit_config:
        edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return hf_tiny.save_tiny_model("llama", tmp_path_factory.mktemp("bad_src"))


def test_missing_tensor_is_named(llama_folder, tmp_path):
    bad = _copy(llama_folder, tmp_path / "bad", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        from_pretrained(bad)


def test_wrong_shape_is_named(llama_folder, tmp_path):
    def shrink(t):
        t["model.layers.2.self_attn.k_proj.weight"] = t["model.layers.2.self_attn.k_proj.weight"][:-1]

    bad = _copy(llama_folder, tmp_path / "bad", shrink)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.2\.self_attn\.k_proj\.weight' has shape \[31, 96\], expected \[32, 96\]"):
        from_pretrained(bad)


def test_unexpected_tensor_is_named(llama_folder, tmp_path):
    def extra(t):
        t["model.layers.0.mlp.extra.weight"] = np.zeros((2, 2), np.float32)

    bad = _copy(llama_folder, tmp_path / "bad", extra)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.extra\.weight'"):
        from_pretrained(bad)


def test_unknown_architecture_is_named(llama_folder, tmp_path):
    bad = _copy(llama_folder, tmp_path / "bad", edit_config=lambda c: c.update(architectures=["MambaForCausalLM"]))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown architecture 'MambaForCausalLM'"):
        from_pretrained(bad)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)


def test_export_of_a_tree_missing_a_parameter_names_it(llama_folder, tmp_path):
    """A parameter the weight map lists but the tree lacks fails the export instead of being left out."""
    from jax_distill.models import save_pretrained

    model = from_pretrained(llama_folder)
    layers = {k: v for k, v in model.params["layers"].items() if k != "up_proj"}
    model.params = {**model.params, "layers": layers}
    with pytest.raises(CheckpointError, match=r"lacks layers/up_proj$"):
        save_pretrained(model, tmp_path / "export")
    assert not (tmp_path / "export" / "model.safetensors").exists()
