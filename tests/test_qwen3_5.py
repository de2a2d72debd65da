"""Qwen3.5 (hybrid Gated DeltaNet + gated attention) against transformers: kernels, layers, model, cache."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_tiny
from jax_distill.models import CheckpointError, from_pretrained, qwen3_5
from jax_distill.models import gated_deltanet as gdn

CHUNK = 4  # small, so test sequences span several chunks and end mid-chunk


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A text-only Qwen3_5ForCausalLM folder, transformers' model of it, and ours (chunk size CHUNK)."""
    folder = hf_tiny.save_tiny_model("qwen3_5", tmp_path_factory.mktemp("qwen3_5"))
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    model = from_pretrained(folder)
    model.config = dataclasses.replace(model.config, chunk_size=CHUNK)
    return folder, reference, model


_forward = jax.jit(qwen3_5.forward, static_argnums=1)


def run(model, tokens, positions, segments, cache=None):
    """Jitted forward; cfg is static and shapes repeat across tests, so each shape compiles once."""
    tokens, positions, segments = (jnp.asarray(a) for a in (tokens, positions, segments))
    logits, cache = _forward(model.params, model.config, tokens, positions, segments, cache)
    return np.asarray(logits), cache


def max_err(a, b, where=None):
    d = np.abs(np.asarray(a) - np.asarray(b))
    return float(d[where].max() if where is not None else d.max())


# ----------------------------------------------------------------------------- whole model vs transformers


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_fp32_logits_match_transformers(tiny, left):
    folder, reference, model = tiny
    assert model.family == "qwen3_5" and model.config.layer_types == tuple(reference.config.layer_types)
    assert qwen3_5.schedule(model.config) == (((qwen3_5.LINEAR, 3), (qwen3_5.FULL, 1)), 2)
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [13, 7, 10], seed=1, left=left)
    ours, _ = run(model, tokens, positions, segments)
    theirs = hf_tiny.torch_logits(reference, tokens, positions, mask)
    assert np.abs(theirs).max() > 0.5  # logits large enough for the tolerance to mean something
    assert max_err(ours, theirs, mask.astype(bool)) < 1e-4


def test_conditional_generation_layout_loads_and_exports_text_only(tiny, tmp_path):
    """The released layout (text under model.language_model.*, vision tower and MTP head present) loads;
    the export is a text-only Qwen3_5ForCausalLM that transformers loads to the same logits."""
    folder, reference, _ = tiny

    full = hf_tiny.qwen3_5_conditional_model(reference.config, seed=3)
    src = tmp_path / "conditional"
    full.save_pretrained(src)
    tensors = load_file(src / "model.safetensors")
    assert any(k.startswith("model.visual.") for k in tensors)
    tensors["mtp.fc.weight"] = np.ones((4, 4), np.float32)  # released checkpoints carry an MTP head
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})

    model = from_pretrained(src)
    assert model.config.architecture == "Qwen3_5ForConditionalGeneration" and model.config.tie_word_embeddings
    assert "lm_head" not in model.params
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [13, 6, 9], seed=2, left=True)
    theirs = hf_tiny.torch_logits(full, tokens, positions, mask)
    ours, _ = run(model, tokens, positions, segments)
    assert max_err(ours, theirs, mask.astype(bool)) < 1e-4

    out, reloaded, _ = hf_tiny.check_export(model, folder, tmp_path / "export", theirs, tokens, positions, mask)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3_5ForCausalLM"]
    exported = load_file(out / "model.safetensors")
    assert not any(k.startswith(("model.language_model.", "model.visual.", "mtp.")) for k in exported)
    assert type(reloaded).__name__ == "Qwen3_5ForCausalLM"


def test_wrong_conv_shape_is_named(tiny, tmp_path):
    folder, _, _ = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    tensors = load_file(folder / "model.safetensors")
    key = "model.layers.4.linear_attn.conv1d.weight"
    tensors[key] = tensors[key][:, :, :3]
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    (bad / "config.json").write_text((folder / "config.json").read_text())
    named = r"'model\.layers\.4\.linear_attn\.conv1d\.weight' has shape \[512, 1, 3\]"
    with pytest.raises(CheckpointError, match=named):
        from_pretrained(bad)


def test_loads_onto_mesh(tiny):
    """Every parameter (stacked per layer kind, conv re-laid out) lands sharded on fsdp x tensor."""
    from jax_distill.parallel.sharding import ShardingRules, make_mesh

    folder, _, model = tiny
    mesh = make_mesh(data=1, fsdp=-1, tensor=2)
    placed = from_pretrained(folder, rules=ShardingRules(mesh))
    qkv = placed.params["delta_layers"]["in_proj_qkv"]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(placed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- cache and packing


def test_prefill_then_decode_equals_full_forward(tiny):
    """Left-padded prompts: prefill, then two one-token decode steps, equal the full forward."""
    _, _, model = tiny
    V = model.config.vocab_size
    tokens, positions, segments, _ = hf_tiny.padded_batch(V, [11, 6, 9], seed=4, left=True)
    extra = np.random.default_rng(5).integers(0, V, size=(3, 2)).astype(np.int32)
    full_tokens = np.concatenate([tokens, extra], axis=1)  # [3, 13]
    full_pos = np.concatenate([positions, positions[:, -1:] + 1 + np.arange(2)], axis=1)
    full_seg = np.concatenate([segments, np.ones((3, 2), np.int32)], axis=1)
    want, _ = run(model, full_tokens, full_pos, full_seg)

    cache = qwen3_5.init_cache(model.config, batch=3, max_len=16)
    got, cache = run(model, tokens, positions, segments, cache)
    assert max_err(got, want[:, :11], segments.astype(bool)) < 1e-5
    for t in (11, 12):
        got, cache = run(model, full_tokens[:, t : t + 1], full_pos[:, t : t + 1], full_seg[:, t : t + 1], cache)
        assert max_err(got[:, 0], want[:, t]) < 1e-5
    assert int(cache["index"]) == 13


def test_packed_rows_equal_separate_examples(tiny):
    """Two examples packed in one row (segment ids, restarting positions) = each one alone."""
    _, _, model = tiny
    a, b = 7, 5  # lengths; the boundary falls mid-chunk and the row ends with padding
    tokens, _, _, _ = hf_tiny.padded_batch(model.config.vocab_size, [13, 13, 13], seed=6)
    tokens[1, :a] = tokens[0, :a]
    tokens[2, :b] = tokens[0, a : a + b]
    positions = np.zeros((3, 13), np.int32)
    segments = np.zeros((3, 13), np.int32)
    positions[0, :a], segments[0, :a] = np.arange(a), 1
    positions[0, a : a + b], segments[0, a : a + b] = np.arange(b), 2
    positions[1, :a], segments[1, :a] = np.arange(a), 1
    positions[2, :b], segments[2, :b] = np.arange(b), 7
    logits, _ = run(model, tokens, positions, segments)
    assert max_err(logits[0, :a], logits[1, :a]) < 1e-4  # a leak across the boundary is O(0.1)
    assert max_err(logits[0, a : a + b], logits[2, :b]) < 1e-4


def test_bf16_prefill_and_decode_within_bf16_tolerance(tiny):
    """bf16 parameters and activations (fp32 delta-rule state): no further from fp32 transformers than
    transformers' own bf16 run is, and the cached path keeps its dtypes."""
    import copy

    import torch

    folder, reference, _ = tiny
    model = from_pretrained(folder, dtype=jnp.bfloat16)
    model.config = dataclasses.replace(model.config, chunk_size=CHUNK)
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [13, 7, 10], seed=1, left=True)
    theirs = hf_tiny.torch_logits(reference, tokens, positions, mask)
    cache = qwen3_5.init_cache(model.config, batch=3, max_len=16, dtype=jnp.bfloat16)
    ours, cache = run(model, tokens, positions, segments, cache)
    real = mask.astype(bool)
    torch_bf16 = hf_tiny.torch_logits(copy.deepcopy(reference).to(torch.bfloat16), tokens, positions, mask)
    assert max_err(ours, theirs, real) < 1.5 * max_err(torch_bf16, theirs, real)
    assert (ours.argmax(-1) == theirs.argmax(-1))[real].mean() > 0.9
    assert cache["state"].dtype == jnp.float32 and cache["conv"].dtype == cache["k"].dtype == jnp.bfloat16
    step, cache = run(model, tokens[:, -1:], positions[:, -1:] + 1, segments[:, -1:], cache)
    assert np.isfinite(step).all() and int(cache["index"]) == 14


# ----------------------------------------------------------------------------- kernels


def _delta_inputs(B, T, N, seed, Dk=128, Dv=128):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    q = gdn.l2norm(f(B, T, N, Dk)) * Dk**-0.5
    k = gdn.l2norm(f(B, T, N, Dk))
    g = -jnp.asarray(rng.uniform(0.01, 3.0, size=(B, T, N)), jnp.float32)
    beta = jnp.asarray(rng.uniform(size=(B, T, N)), jnp.float32)
    return q, k, f(B, T, N, Dv), g, beta, 0.1 * f(B, N, Dk, Dv)


_chunked = jax.jit(gdn.chunk_gated_delta_rule, static_argnums=8)


@pytest.mark.parametrize("T,chunks", [(1, (4,)), (6, (4, 64)), (23, (1, 5, 16))])
def test_chunked_matches_recurrent(T, chunks):
    """Several chunk sizes, lengths not divisible by them, an initial state, and segment changes."""
    q, k, v, g, beta, state = _delta_inputs(2, T, 2, seed=T)
    segments = np.ones((2, T), np.int32)
    segments[0, T // 2 :] = 2  # a packed second example: state must restart there
    segments[1, : T // 3] = 0  # left padding
    history = jnp.ones((2, 3), jnp.int32)  # the state (and conv history) belongs to segment 1
    runs = gdn.segment_runs(history, jnp.asarray(segments))
    ref_out, ref_state = jax.jit(gdn.recurrent_gated_delta_rule)(q, k, v, g, beta, runs[:, 3:], state, runs[:, 2])
    assert float(jnp.abs(ref_state).max()) > 0.1
    for chunk in chunks:
        out, final = _chunked(q, k, v, g, beta, runs[:, 3:], state, runs[:, 2], chunk)
        assert max_err(out, ref_out) < 1e-5, chunk
        assert max_err(final, ref_state) < 1e-5, chunk


def test_kernels_match_transformers_reference():
    import torch
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    q, k, v, g, beta, state = _delta_inputs(1, 19, 2, seed=11)
    runs = jnp.zeros((1, 19), jnp.int32)
    out, final = _chunked(q, k, v, g, beta, runs, state, runs[:, 0], 8)
    t = lambda x: torch.tensor(np.asarray(x))  # noqa: E731
    ref_out, ref_final = torch_chunk_gated_delta_rule(
        t(q / 128**-0.5), t(k), t(v), t(g), t(beta), chunk_size=8, initial_state=t(state), output_final_state=True
    )
    assert max_err(out, ref_out.numpy()) < 1e-5
    assert max_err(final, ref_final.numpy()) < 1e-5


# ----------------------------------------------------------------------------- layer gradients vs torch


def _ctx(cfg, B, T, positions):
    segments = jnp.ones((B, T), jnp.int32)
    ctx = {
        "segments": segments,
        "runs": gdn.segment_runs(jnp.zeros((B, cfg.linear_conv_kernel_dim - 1), jnp.int32), segments),
        "cos_sin": cfg.rope.cos_sin(jnp.asarray(positions)),
    }
    ctx["mask"] = qwen3_5.L.attention_mask(positions, segments, positions, segments)
    return ctx


def _layer_params(params, group, index):
    return jax.tree.map(lambda a: a[index], params[group])


def _compare_grads(kind, torch_layer, torch_call, params, names, model, seed):
    """jax.grad of sum(layer(x) * r) w.r.t. x and the layer's weights vs torch autograd."""
    import torch

    cfg = model.config
    B, T, D = 2, 11, cfg.hidden_size
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    r = rng.normal(size=(B, T, D)).astype(np.float32)
    positions = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    ctx = _ctx(cfg, B, T, jnp.asarray(positions))

    def loss(x, p):
        out, _ = qwen3_5.MIXERS[kind](x, p, cfg, ctx, None, lambda name: None)
        return jnp.sum(out * r)

    gx, gp = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x), params)
    tx = torch.tensor(x, requires_grad=True)
    torch_layer.zero_grad()
    (torch_call(tx, positions) * torch.tensor(r)).sum().backward()
    assert max_err(gx, tx.grad.numpy()) < 1e-4
    for ours, theirs in names.items():
        grad = dict(torch_layer.named_parameters())[theirs].grad.numpy()
        mine = np.asarray(gp[ours])
        if ours == "conv1d":
            mine = mine.T[:, None, :]
        elif mine.ndim == 2:
            mine = mine.T
        assert mine.shape == grad.shape, ours
        assert max_err(mine, grad) < 1e-4 * max(1.0, np.abs(grad).max()), ours


def test_deltanet_layer_grad_matches_torch(tiny):
    _, reference, model = tiny
    layer = reference.model.layers[4].linear_attn  # first DeltaNet layer of the second period
    names = {n: f"{n}.weight" for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj", "norm")}
    names |= {"conv1d": "conv1d.weight", "dt_bias": "dt_bias", "A_log": "A_log"}
    p = _layer_params(model.params, "delta_layers", 3)
    _compare_grads(qwen3_5.LINEAR, layer, lambda x, pos: layer(x), p, names, model, seed=8)


def test_attention_layer_grad_matches_torch(tiny):
    import torch

    _, reference, model = tiny
    layer = reference.model.layers[3].self_attn

    def call(x, positions):
        pos = torch.as_tensor(np.ascontiguousarray(positions), dtype=torch.long)
        cos_sin = reference.model.rotary_emb(x, pos[None].expand(3, -1, -1))
        T = x.shape[1]
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None].expand(x.shape[0], 1, T, T)
        return layer(x, position_embeddings=cos_sin, attention_mask=mask)[0]

    names = {f"{n}_proj": f"{n}_proj.weight" for n in "qkvo"} | {"q_norm": "q_norm.weight", "k_norm": "k_norm.weight"}
    p = _layer_params(model.params, "attn_layers", 0)
    _compare_grads(qwen3_5.FULL, layer, call, p, names, model, seed=9)
