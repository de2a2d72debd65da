"""gpt-oss student against transformers: logits, gradients, KV cache, MoE kernel, MXFP4, export."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_tiny
from jax_distill.models import CheckpointError, from_pretrained, gpt_oss, hf_io, moe, mxfp4, save_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MXFP4_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
}


def _save_reference(folder, seed=0):
    """Tiny random HF gpt-oss with every bias and sink non-zero (HF initialises most biases at zero)
    and gate/up weights large enough that the SwiGLU limit (7) clamps."""
    model = hf_tiny.torch_model(hf_tiny.tiny_hf_config("gpt_oss"), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("sinks"):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            if name.endswith("experts.gate_up_proj"):
                p.mul_(6.0)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(hf_tiny.tokenizer_dir()).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt_oss")
    return folder, _save_reference(folder)


_forward = jax.jit(gpt_oss.forward, static_argnums=1)  # one compile cache for every test


def _logits(model, tokens, positions, segments):
    logits, _ = _forward(model.params, model.config, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    return np.asarray(logits)


def _assert_close_on_real(ours, theirs, mask, tol=1e-4):
    real = mask.astype(bool)
    assert np.abs(ours - theirs)[real].max() < tol


# ----------------------------------------------------------------------------- forward parity


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_fp32_logits_match_transformers(tiny, left):
    folder, reference = tiny
    model = from_pretrained(folder)
    assert model.family == "gpt_oss" and model.config.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [13, 7, 10], seed=1, left=left)
    ours = _logits(model, tokens, positions, segments)
    _assert_close_on_real(ours, hf_tiny.torch_logits(reference, tokens, positions, mask), mask)


def test_tiny_config_exercises_window_and_clamp(tiny):
    """The parity test is only meaningful if the window cuts and the SwiGLU limit clamps."""
    folder, reference = tiny
    model = from_pretrained(folder)
    tokens, positions, segments, _ = hf_tiny.padded_batch(model.config.vocab_size, [13, 7, 10], seed=1)
    wide = dataclasses.replace(model.config, sliding_window=1000)
    base = _logits(model, tokens, positions, segments)
    no_window, _ = _forward(model.params, wide, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    assert np.abs(base - np.asarray(no_window))[0, 6:].max() > 1e-3
    p = jax.tree.map(lambda a: a[0], model.params["layers"])
    x = jax.random.normal(jax.random.key(0), (40, model.config.hidden_size))
    gate_up = jnp.einsum("td,edf->etf", x, p["gate_up_proj"]) + p["gate_up_bias"][:, None]
    assert (gate_up[..., ::2] > model.config.swiglu_limit).any() and (jnp.abs(gate_up[..., 1::2]) > model.config.swiglu_limit).any()


def test_rope_yarn_matches_transformers(tiny):
    folder, reference = tiny
    cfg = from_pretrained(folder).config
    inv, factor = cfg.rope.inverse_frequencies()
    rotary = reference.model.rotary_emb
    np.testing.assert_allclose(np.asarray(inv), rotary.inv_freq.numpy(), rtol=1e-6)
    assert factor == pytest.approx(rotary.attention_scaling) and factor != 1.0


# ----------------------------------------------------------------------------- gradients


def test_grads_match_torch_autograd(tiny):
    """d(loss)/d(every parameter) through sink attention and the MoE equals torch autograd."""
    folder, reference = tiny
    model = from_pretrained(folder)
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [11, 8], seed=4)
    probe = np.random.default_rng(5).standard_normal((*tokens.shape, model.config.vocab_size)).astype(np.float32)
    probe *= mask[..., None]

    def loss(params):
        logits, _ = gpt_oss.forward(params, model.config, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
        return jnp.sum(logits * probe) / mask.sum()

    ours = dict(hf_io.iter_hf_tensors(jax.jit(jax.grad(loss))(model.params), gpt_oss.weight_map(model.config)))

    reference.zero_grad()
    out = reference(
        input_ids=torch.as_tensor(tokens, dtype=torch.long),
        attention_mask=torch.as_tensor(mask),
        position_ids=torch.as_tensor(positions, dtype=torch.long),
    )
    (torch.sum(out.logits * torch.as_tensor(probe)) / mask.sum()).backward()
    theirs = {name: p.grad.numpy() for name, p in reference.named_parameters()}
    reference.zero_grad()
    assert set(ours) == set(theirs)
    for name, g in theirs.items():
        scale = max(1.0, float(np.abs(g).max()))
        err = float(np.abs(ours[name] - g).max())
        assert err < 1e-4 * scale, f"{name}: max grad error {err:.2e} (scale {scale:.2e})"
    assert np.abs(theirs["model.layers.0.self_attn.sinks"]).max() > 1e-3
    assert np.abs(theirs["model.layers.1.mlp.experts.gate_up_proj"]).max() > 1e-3


# ----------------------------------------------------------------------------- KV cache


def test_prefill_then_decode_equals_full_forward(tiny):
    folder, _ = tiny
    model = from_pretrained(folder)
    cfg = model.config
    lengths = [9, 6]  # longer than the window (5): decode must drop the oldest keys on sliding layers
    tokens, positions, segments, _ = hf_tiny.padded_batch(cfg.vocab_size, lengths, seed=6, left=True)
    nxt = np.random.default_rng(7).integers(0, cfg.vocab_size, size=(2, 2)).astype(np.int32)
    step = lambda *a: _forward(model.params, cfg, *a)  # noqa: E731

    cache = gpt_oss.init_cache(cfg, batch=2, max_len=tokens.shape[1] + 2)
    prefill, cache = step(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments), cache)
    decoded, pos = [], positions[:, -1:]
    for j in range(2):
        pos = pos + 1
        logits, cache = step(jnp.asarray(nxt[:, j : j + 1]), jnp.asarray(pos), jnp.ones((2, 1), jnp.int32), cache)
        decoded.append(np.asarray(logits[:, 0]))
    assert int(cache["index"]) == tokens.shape[1] + 2

    full_tokens = np.concatenate([tokens, nxt], 1)
    full_positions = np.concatenate([positions, positions[:, -1:] + np.array([[1, 2]])], 1)
    full_segments = np.concatenate([segments, np.ones((2, 2), np.int32)], 1)
    full = _logits(model, full_tokens, full_positions, full_segments)
    real = segments.astype(bool)
    assert np.abs(np.asarray(prefill) - full[:, : tokens.shape[1]])[real].max() < 1e-4
    np.testing.assert_allclose(np.stack(decoded, 1), full[:, tokens.shape[1] :], atol=1e-4)


# ----------------------------------------------------------------------------- MoE kernel


def _dense_experts(x, weights, expert_ids, p, alpha, limit):
    """Reference: every expert on every token, combined with a [T, E] gate matrix."""
    T, E = x.shape[0], p["gate_up_proj"].shape[0]
    h = jnp.einsum("td,edf->etf", x, p["gate_up_proj"]) + p["gate_up_bias"][:, None]
    y = jnp.einsum("etf,efd->etd", moe.clamped_swiglu(h, alpha, limit), p["down_proj"]) + p["down_bias"][:, None]
    gates = jnp.zeros((T, E)).at[jnp.arange(T)[:, None], expert_ids].add(weights)
    return jnp.einsum("te,etd->td", gates, y)


def _random_cfg(**overrides):
    hf = hf_tiny.tiny_hf_config("gpt_oss").to_dict()
    hf["architectures"] = ["GptOssForCausalLM"]
    return gpt_oss.Config.from_hf(hf, **overrides)


def _random_params(cfg, seed):
    """Random parameters drawn in numpy (eager jax.random per leaf is slow to dispatch on a busy CPU)."""
    rng = np.random.default_rng(seed)
    specs = gpt_oss.param_specs(cfg)
    return jax.tree.map(
        lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape, np.float32) + (s.init == "ones")),
        specs,
        is_leaf=lambda x: isinstance(x, type(specs["embed"])),
    )


@pytest.mark.parametrize("impl", ["blocked", "ragged"])
def test_sorted_moe_equals_dense_reference(impl):
    cfg = _random_cfg(num_experts=7, num_experts_per_token=3)
    p = jax.tree.map(lambda a: a[1], _random_params(cfg, seed=3)["layers"])

    x = jax.random.normal(jax.random.key(1), (41, cfg.hidden_size))
    alpha, limit = cfg.swiglu_alpha, cfg.swiglu_limit

    def run(fn, x, p):
        weights, ids = moe.route(x, p["router"], p["router_bias"], cfg.num_experts_per_token)
        return fn(x, weights, ids, p, alpha, limit)

    probe = jax.random.normal(jax.random.key(2), x.shape)

    @jax.jit
    def value_and_grads(x, p):  # both paths' outputs, d/dx and d/dparams in one compile
        out = {}
        for name, fn in (("sorted", functools.partial(moe.experts, impl=impl)), ("dense", _dense_experts)):
            y, vjp = jax.vjp(functools.partial(run, fn), x, p)
            out[name] = (y, vjp(probe))
        return out

    # balanced routing (every expert used), then routing skewed so expert 0 takes every token
    # (a group spanning several row blocks) and expert 6 none
    skewed = {**p, "router_bias": p["router_bias"].at[0].add(100.0).at[6].add(-100.0)}
    for params in (p, skewed):
        out = value_and_grads(x, params)
        for a, b in zip(jax.tree.leaves(out["sorted"]), jax.tree.leaves(out["dense"])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    _, ids = moe.route(x, p["router"], p["router_bias"], cfg.num_experts_per_token)
    assert len(np.unique(np.asarray(ids))) == cfg.num_experts
    _, ids = moe.route(x, skewed["router"], skewed["router_bias"], cfg.num_experts_per_token)
    assert (np.asarray(ids) == 0).any(axis=1).all() and not (np.asarray(ids) == 6).any()


@pytest.mark.parametrize("impl", ["blocked", "ragged"])
def test_expert_lora_equals_its_merged_weights(impl):
    """Per-expert adapters run on the routed rows (base grouped matmul + two low-rank ones): output and
    gradients of a, b equal those of the merged weights in the dense reference; dropout keys reach them."""
    from jax_distill.models.layers import Adapted, LoRA, weight

    cfg = _random_cfg(num_experts=7, num_experts_per_token=3)
    p = jax.tree.map(lambda a: a[1], _random_params(cfg, seed=5)["layers"])
    rng = np.random.default_rng(6)
    adapters = {}
    for name in ("gate_up_proj", "down_proj"):
        E, n_in, n_out = p[name].shape
        adapters[name] = LoRA(jnp.asarray(rng.standard_normal((E, n_in, 3), np.float32) / np.sqrt(n_in)),
                              jnp.asarray(0.1 * rng.standard_normal((E, 3, n_out), np.float32)), scale=2.0, dropout=0.5)
    x = jax.random.normal(jax.random.key(1), (41, cfg.hidden_size))
    weights, ids = moe.route(x, p["router"], p["router_bias"], cfg.num_experts_per_token)
    probe = jax.random.normal(jax.random.key(2), x.shape)

    def adapted(lora_params):
        return {**p, **{n: Adapted(p[n], lora_params[n]) for n in lora_params}}

    @jax.jit
    def value_and_grads(lora_params):
        sorted_fn = lambda lp: moe.experts(x, weights, ids, adapted(lp), cfg.swiglu_alpha, cfg.swiglu_limit, impl)  # noqa: E731
        merged = lambda lp: _dense_experts(x, weights, ids, jax.tree.map(  # noqa: E731
            weight, adapted(lp), is_leaf=lambda a: isinstance(a, Adapted)), cfg.swiglu_alpha, cfg.swiglu_limit)
        out = {}
        for name, fn in (("sorted", sorted_fn), ("merged", merged)):
            y, vjp = jax.vjp(fn, lora_params)
            out[name] = (y, vjp(probe))
        return out

    out = value_and_grads(adapters)
    for a, b in zip(jax.tree.leaves(out["sorted"]), jax.tree.leaves(out["merged"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(out["sorted"][1][0]["gate_up_proj"].a).max()) > 0
    keys = lambda name: jax.random.fold_in(jax.random.key(3), len(name))  # noqa: E731
    dropped = moe.experts(x, weights, ids, adapted(adapters), cfg.swiglu_alpha, cfg.swiglu_limit, impl, keys)
    assert float(jnp.abs(dropped - out["sorted"][0]).max()) > 1e-3


def test_expert_axis_shards_over_mesh():
    """Experts split over the tensor axis (expert parallel) give the unsharded logits."""
    from jax_distill.parallel.sharding import DEFAULT_RULES, ShardingRules, make_mesh, tree_shardings, use_rules

    cfg = _random_cfg(num_experts=4)
    params = _random_params(cfg, seed=4)
    mesh = make_mesh(data=1, fsdp=-1, tensor=4)
    expert_parallel = {"experts": "tensor", "mlp": None}  # the tensor axis splits experts, not their width
    rules = ShardingRules(mesh, tuple((n, expert_parallel.get(n, v)) for n, v in DEFAULT_RULES))
    sharded_params = jax.device_put(params, tree_shardings(gpt_oss.param_specs(cfg), rules))
    assert sharded_params["layers"]["gate_up_proj"].sharding.spec[1] == "tensor"
    tokens, positions, segments, _ = hf_tiny.padded_batch(cfg.vocab_size, [12, 9], seed=8)
    args = tuple(jnp.asarray(a) for a in (tokens, positions, segments))
    with use_rules(rules):
        sharded, _ = jax.jit(lambda p, *a: gpt_oss.forward(p, cfg, *a))(sharded_params, *args)
    plain, _ = jax.jit(lambda p, *a: gpt_oss.forward(p, cfg, *a))(params, *args)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), atol=1e-5)


# ----------------------------------------------------------------------------- MXFP4


def test_mxfp4_dequantize_matches_transformers():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(3, 40, 2, 16), dtype=np.uint8)  # every code, incl. -0
    scales = rng.integers(110, 140, size=(3, 40, 2), dtype=np.uint8)
    theirs = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    np.testing.assert_array_equal(mxfp4.dequantize(blocks, scales), theirs.numpy())

    w = rng.standard_normal((3, 64, 40)).astype(np.float32) * np.exp(rng.standard_normal((3, 1, 40)))
    w[0, :32, 0] = 0.0  # an all-zero block
    b, s = mxfp4.quantize(w)
    assert b.shape == (3, 40, 2, 16) and s.shape == (3, 40, 2)
    back = mxfp4.dequantize(b, s)
    theirs = convert_moe_packed_tensors(torch.from_numpy(b), torch.from_numpy(s), dtype=torch.float32)
    np.testing.assert_array_equal(back, theirs.numpy())
    step = np.ldexp(1.0, s.astype(np.int32) - 127)  # FP4 spacing is at most 2 units: error <= 1 unit
    bound = np.repeat(np.swapaxes(step, -1, -2), 32, axis=1)  # [E, in, out]
    assert (np.abs(back - w) <= bound).all() and back[0, :32, 0].max() == 0.0
    assert np.abs(back - w).mean() < 0.15 * np.abs(w).mean()  # ~3 significant bits


def _quantized_copy(src, dst):
    """The tiny checkpoint with experts stored as MXFP4 blocks/scales, as released gpt-oss ships them."""
    dst.mkdir()
    tensors = load_file(src / "model.safetensors")
    for key in [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        tensors[key + "_blocks"], tensors[key + "_scales"] = mxfp4.quantize(tensors.pop(key))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = MXFP4_CONFIG
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, tensors


def test_mxfp4_checkpoint_loads_like_transformers_and_exports_plain(tiny, tmp_path):
    folder, _ = tiny
    quantized, tensors = _quantized_copy(folder, tmp_path / "mxfp4")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        quantized, dtype=torch.float32, attn_implementation="eager"
    ).eval()  # no triton on CPU: transformers dequantizes on load
    model = from_pretrained(quantized)
    assert model.config.mxfp4
    state = reference.state_dict()
    for i in range(model.config.num_layers):
        for name in ("gate_up_proj", "down_proj"):
            theirs = state[f"model.layers.{i}.mlp.experts.{name}"].numpy()
            np.testing.assert_array_equal(np.asarray(model.params["layers"][name][i]), theirs)
    # on a mesh each device dequantizes only its block; down_proj's input dim (96) splits into 24s,
    # which cut through 32-wide scale groups
    from jax_distill.parallel.sharding import ShardingRules, make_mesh

    placed = from_pretrained(quantized, rules=ShardingRules(make_mesh(data=1, fsdp=-1, tensor=4)))
    assert placed.params["layers"]["down_proj"].sharding.spec[2:] == ("tensor", "fsdp")
    for name in ("gate_up_proj", "down_proj"):
        np.testing.assert_array_equal(np.asarray(placed.params["layers"][name]), np.asarray(model.params["layers"][name]))
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [12, 8], seed=9)
    ours = _logits(model, tokens, positions, segments)
    _assert_close_on_real(ours, hf_tiny.torch_logits(reference, tokens, positions, mask), mask)

    out = save_pretrained(model, tmp_path / "export", tokenizer_from=folder)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    plain = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    _assert_close_on_real(hf_tiny.torch_logits(plain, tokens, positions, mask), ours, mask)


def test_mxfp4_missing_or_misshapen_scales_are_named(tiny, tmp_path):
    folder, _ = tiny
    quantized, tensors = _quantized_copy(folder, tmp_path / "mxfp4")
    key = "model.layers.2.mlp.experts.down_proj_scales"
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "config.json").write_text((quantized / "config.json").read_text())
    save_file({k: v for k, v in tensors.items() if k != key}, missing / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"missing tensor '{key}'"):
        from_pretrained(missing)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((quantized / "config.json").read_text())
    save_file({**tensors, key: tensors[key][:, :-1]}, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"down_proj_scales \[5, 63, 3\], expected .* / \[5, 64, 3\]"):
        from_pretrained(bad)


# ----------------------------------------------------------------------------- export


def test_round_trip_through_transformers(tiny, tmp_path):
    folder, reference = tiny
    model = from_pretrained(folder)
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [9, 12], seed=3)
    theirs = hf_tiny.torch_logits(reference, tokens, positions, mask)
    _, reloaded, again = hf_tiny.check_export(model, folder, tmp_path / "export", theirs, tokens, positions, mask)
    assert type(reloaded) is type(reference)
    assert again.config == model.config


def test_lora_on_attention_and_experts_runs_and_export_merges(tiny, tmp_path):
    """Attention projections go through layers.linear, expert weights through per-expert low-rank
    matmuls: adapters change the logits exactly as their merged weights do, and export writes those."""
    from jax_distill.models.layers import Adapted, LoRA, weight

    folder, _ = tiny
    model = from_pretrained(folder)
    rng = np.random.default_rng(11)
    layers = dict(model.params["layers"])
    for name in ("q_proj", "o_proj", "gate_up_proj", "down_proj"):
        *stack, n_in, n_out = layers[name].shape
        lora = LoRA(jnp.asarray(rng.standard_normal((*stack, n_in, 3), np.float32) / np.sqrt(n_in)),
                    jnp.asarray(0.2 * rng.standard_normal((*stack, 3, n_out), np.float32)), scale=2.0)  # fmt: skip
        layers[name] = Adapted(layers[name], lora)
    adapted = dataclasses.replace(model, params={**model.params, "layers": layers})
    merged = dataclasses.replace(model, params=jax.tree.map(weight, adapted.params, is_leaf=lambda x: isinstance(x, Adapted)))
    tokens, positions, segments, mask = hf_tiny.padded_batch(model.config.vocab_size, [10, 7], seed=12)
    with_lora = np.asarray(adapted.forward(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))[0])
    base, merged_logits = _logits(model, tokens, positions, segments), _logits(merged, tokens, positions, segments)
    _assert_close_on_real(with_lora, merged_logits, mask, 1e-4)
    assert np.abs(with_lora - base)[mask.astype(bool)].max() > 1e-2

    out = save_pretrained(adapted, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    _assert_close_on_real(hf_tiny.torch_logits(reloaded, tokens, positions, mask), merged_logits, mask)


# gpt-oss-20b's config.json as released (quantized experts; old-style rope_scaling + rope_theta)
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "eos_token_id": 200002,
    "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880,
    "initial_context_length": 4096, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
    "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "pad_token_id": 199999,
    "quantization_config": MXFP4_CONFIG, "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False,
    "vocab_size": 201088,
}  # fmt: skip


def test_released_20b_config_reads_like_transformers():
    """The real config: same YaRN frequencies and attention factor, same parameter count, quantized experts."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = gpt_oss.Config.from_hf(GPT_OSS_20B)
    assert cfg.mxfp4 and cfg.num_experts_per_token == 4 and cfg.sliding_window == 128
    assert cfg.layer_types[:2] == ("sliding_attention", "full_attention")
    hf_cfg = transformers.GptOssConfig(**{k: v for k, v in GPT_OSS_20B.items() if k != "quantization_config"})
    inv, factor = cfg.rope.inverse_frequencies()
    inv_t, factor_t = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, "cpu")
    np.testing.assert_allclose(np.asarray(inv), inv_t.numpy(), rtol=1e-6)
    assert factor == pytest.approx(factor_t)
    with torch.device("meta"):
        reference = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    specs = jax.tree.leaves(gpt_oss.param_specs(cfg), is_leaf=lambda x: hasattr(x, "axes"))
    assert sum(int(np.prod(s.shape)) for s in specs) == sum(p.numel() for p in reference.parameters())
    keys = {k for t in gpt_oss.weight_map(cfg).values() for i in (0, 23) for k in t.consumed_keys(i)}
    assert "model.layers.23.mlp.experts.down_proj_scales" in keys and "model.layers.0.mlp.experts.gate_up_proj" not in keys
    # export of a model loaded from this config is a plain transformers config
    assert "quantization_config" not in cfg.to_hf()
    again = gpt_oss.Config.from_hf(cfg.to_hf())
    assert again == dataclasses.replace(cfg, mxfp4=False)
