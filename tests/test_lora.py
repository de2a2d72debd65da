"""LoRA: default targets per family (every attention / token-mixer / MLP projection), targets by regex, zero-init B,
frozen base, parameter counts, merged export and PEFT export parity (target_modules and target_parameters)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_tiny import padded_batch, save_tiny_model, torch_logits
from ml_collections import ConfigDict

from jax_distill.models import family_module, from_pretrained
from jax_distill.models.layers import Adapted, LoRA
from jax_distill.parallel.sharding import ShardingRules, make_mesh
from jax_distill.training import export, lora, optim
from jax_distill.training import state as state_lib
from jax_distill.training import student as student_lib


def _lora_cfg(rank=4, alpha=8.0, dropout=0.05, targets=""):
    return ConfigDict(dict(rank=rank, alpha=alpha, dropout=dropout, targets=targets))


ATTENTION, MLP = tuple(f"{p}_proj" for p in "qkvo"), ("gate_proj", "up_proj", "down_proj")
DELTANET = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")
# LoRA's default targets (lora.targets ""): every attention / token-mixer and MLP projection of the family
EXPECTED_TARGETS = {
    "llama": sorted(f"layers/{n}" for n in ATTENTION + MLP),
    "qwen3_5": sorted([f"attn_layers/{n}" for n in ATTENTION + MLP] + [f"delta_layers/{n}" for n in DELTANET + MLP]),
    "gpt_oss": sorted([f"layers/{n}" for n in ATTENTION] + ["layers/gate_up_proj", "layers/down_proj"]),  # router frozen
}
WITH_ROUTER = r"^layers/((q|k|v|o)_proj|gate_up_proj|down_proj|router)$"  # gpt-oss: default targets + router


def _model_cfg(path):
    return ConfigDict(dict(path=str(path), hf=ConfigDict(), param_dtype="float32", compute_dtype="float32",
                           remat="none", seed=0))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("base") / "llama")


@pytest.fixture(scope="module")
def rules():
    return ShardingRules(make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def test_targets_by_regex():
    module = family_module("llama")
    from hf_tiny import tiny_hf_config

    cfg = module.Config.from_hf(tiny_hf_config("llama").to_dict())
    specs = module.param_specs(cfg)
    assert sorted(lora.target_paths(specs, lora.LoRAConfig())) == EXPECTED_TARGETS["llama"]
    assert lora.target_paths(specs, lora.LoRAConfig(targets=r"layers/(q|v)_proj$")) == ["layers/q_proj", "layers/v_proj"]
    with pytest.raises(ValueError, match="matches no weight.*layers/q_proj"):
        lora.target_paths(specs, lora.LoRAConfig(targets="qproj"))
    with pytest.raises(ValueError, match="matches no weight"):  # a norm [L, D] is no matrix to adapt
        lora.target_paths(specs, lora.LoRAConfig(targets="input_norm"))
    adapted = lora.adapted_specs(specs, lora.LoRAConfig(rank=5))
    q = adapted["layers"]["q_proj"]
    L, D, NH = specs["layers"]["q_proj"].shape
    assert q.lora.a.shape == (L, D, 5) and q.lora.b.shape == (L, 5, NH) and q.lora.b.init == "zeros"
    assert q.lora.a.axes == ("layers", "embed", "lora_rank")


def _batch(vocab, seed=0):
    tokens, positions, segments, mask = padded_batch(vocab, [24, 17, 24, 9], seed=seed)
    targets = np.roll(tokens, -1, axis=1)
    loss_mask = segments * (np.arange(tokens.shape[1]) < np.array([23, 16, 23, 8])[:, None])
    return dict(tokens=tokens, targets=targets, positions=positions, segment_ids=segments,
                loss_mask=loss_mask.astype(np.int32)), mask


def test_lora_training_keeps_base_and_exports_match(base_dir, rules, tmp_path):
    stu = student_lib.load(_model_cfg(base_dir), "lora", _lora_cfg(), rules, seed=0)
    module, cfg = stu.model.module, stu.model.config
    base = from_pretrained(base_dir)
    trainable, frozen = stu.split(stu.model.params)
    assert all(isinstance(x, LoRA) for x in jax.tree.leaves(trainable, is_leaf=lambda x: isinstance(x, LoRA)))
    batch, hf_mask = _batch(cfg.vocab_size)
    fwd = jax.jit(lambda p: module.forward(p, cfg, batch["tokens"], batch["positions"], batch["segment_ids"])[0])
    # B = 0: the adapted model is exactly the base model
    np.testing.assert_array_equal(np.asarray(fwd(stu.model.params)), np.asarray(fwd(base.params)))

    cfg_opt = ConfigDict(dict(name="adamw_8bit", lr=1e-2, warmup_frac=0.0, final_lr_frac=0.0, b1=0.9, b2=0.999,
                              eps=1e-8, weight_decay=0.0, clip_norm=1.0, min_8bit_size=0))
    tx, sched = optim.make(cfg_opt, 3)
    step = jax.jit(state_lib.make_train_step(module, cfg, tx, sched, dropout=True, rules=rules))
    st = state_lib.TrainState(jnp.zeros([], jnp.int32), trainable, tx.init(trainable),
                              jax.random.key_data(jax.random.key(0)), jnp.zeros([], jnp.float32))
    losses = []
    for _ in range(3):
        st, m = step(st, frozen, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0]
    params = lora.combine(st.params, frozen)

    # base weights bit-identical after training; adapters moved
    flat_base = {lora.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(base.params)[0]}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = lora.path_str(path)
        if "/lora/" in name:
            continue
        np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_base[name.replace("/base", "")]), err_msg=name)
    assert float(jnp.abs(params["layers"]["q_proj"].lora.b).max()) > 0

    trained = fwd(params)
    assert float(jnp.abs(trained - fwd(base.params)).max()) > 1e-3
    merged = lora.merge(params)
    assert not any(isinstance(x, Adapted) for x in jax.tree.leaves(merged, is_leaf=lambda x: isinstance(x, Adapted)))
    np.testing.assert_allclose(np.asarray(fwd(merged)), np.asarray(trained), atol=2e-5, rtol=0)

    import dataclasses

    paths = export.export(dataclasses.replace(stu.model, params=params), str(tmp_path / "export"),
                          tokenizer_from=str(base_dir), dtype=jnp.float32, lora_cfg=stu.lora, base_model=str(base_dir))
    reloaded = from_pretrained(paths["hf"])
    np.testing.assert_allclose(np.asarray(fwd(reloaded.params)), np.asarray(trained), atol=2e-5, rtol=0)

    import torch
    import transformers
    from peft import PeftModel

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager", dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf_base, paths["peft"]).eval()
    assert peft_model.peft_config["default"].r == 4 and peft_model.peft_config["default"].lora_alpha == 8.0
    theirs = torch_logits(peft_model, batch["tokens"], batch["positions"], hf_mask)
    real = hf_mask.astype(bool)
    np.testing.assert_allclose(theirs[real], np.asarray(trained)[real], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- every family's projections


def _adapted_paths(params) -> list[str]:
    is_adapted = lambda x: isinstance(x, Adapted)  # noqa: E731
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_adapted)[0]
    return sorted(lora.path_str(p) for p, x in leaves if is_adapted(x))


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: save_tiny_model(family, root / family) for family in ("qwen3_5", "gpt_oss")}


@pytest.mark.parametrize("family", ["qwen3_5", "gpt_oss"])
def test_default_targets_cover_every_projection(family_dirs, family):
    """Qwen3.5's DeltaNet projections and gpt-oss's experts are adapted by default (the router is not); an
    expert adapter is one low-rank pair per expert, its expert axis sharded as the base's; the counts
    the run summary prints add up."""
    rules = ShardingRules(make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    if family == "gpt_oss":  # 5 experts over 5 devices on `data`, the rest whole
        table = {**dict(rules.rules), "experts": "data"}
        rules = ShardingRules(make_mesh(5, 1, 1, devices=jax.devices()[:5]), tuple(table.items()))
    stu = student_lib.load(_model_cfg(family_dirs[family]), "lora", lora.LoRAConfig.as_config(), rules, seed=0)
    assert _adapted_paths(stu.model.params) == EXPECTED_TARGETS[family]

    counts = lora.param_counts(stu.specs, lora_mode=True)
    cfg = stu.model.config
    base_specs = family_module(family).param_specs(cfg)
    n_base, n_lora = lora.count(base_specs), lora.count(stu.split(stu.model.params)[0])
    assert counts["adapted"] == EXPECTED_TARGETS[family]
    assert (counts["total"], counts["trainable"], counts["frozen"]) == (n_base + n_lora, n_lora, n_base)
    full = lora.param_counts(base_specs, lora_mode=False)
    assert full["trainable"] == full["total"] == n_base and full["frozen"] == 0 and "adapted" not in full
    r = 64
    if family == "gpt_oss":
        L, E, D, F = cfg.num_layers, cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
        gate_up = stu.model.params["layers"]["gate_up_proj"]
        assert gate_up.lora.a.shape == (L, E, D, r) and gate_up.lora.b.shape == (L, E, r, 2 * F)
        assert gate_up.lora.a.sharding.spec[:2] == (None, "data") and gate_up.lora.b.sharding.spec[:2] == (None, "data")
        NH, KH = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        assert counts["trainable_by_role"] == {"attention": L * r * ((D + NH) + 2 * (D + KH) + (NH + D)),
                                               "experts": L * E * r * ((D + 2 * F) + (F + D))}
        assert full["trainable_by_role"]["experts"] == L * E * (D * 2 * F + F * D)
    else:
        assert set(counts["trainable_by_role"]) == {"attention", "linear_attention", "mlp"}
        delta = stu.model.params["delta_layers"]
        assert counts["trainable_by_role"]["linear_attention"] == sum(lora.count(delta[n].lora) for n in DELTANET)


def _randomise_adapters(params, seed=0):
    """Adapters as training might leave them: b no longer zero, so every adapter changes the logits."""
    leaves, treedef = jax.tree.flatten(params, is_leaf=lambda x: isinstance(x, LoRA))
    rng = np.random.default_rng(seed)
    out = []
    for x in leaves:
        if isinstance(x, LoRA):
            b = jnp.asarray(0.1 * rng.standard_normal(x.b.shape, np.float32))
            x = LoRA(x.a, b, x.scale, x.dropout)
        out.append(x)
    return treedef.unflatten(out)


@pytest.mark.parametrize("family,targets", [("qwen3_5", ""), ("gpt_oss", ""), ("gpt_oss", WITH_ROUTER)],
                         ids=["qwen3_5", "gpt_oss", "gpt_oss_router"])
def test_step0_is_base_and_peft_export_matches(family_dirs, rules, tmp_path, family, targets):
    """At step 0 the adapted student is the base, bit for bit; with adapters moved, the merged export and
    the PEFT adapter (target_modules for Linear projections, target_parameters for gpt-oss's stacked
    experts and router) loaded by transformers + peft give our LoRA model's logits within 1e-4 (fp32)."""
    import dataclasses
    import json

    import torch
    import transformers
    from peft import PeftModel

    folder = family_dirs[family]
    stu = student_lib.load(_model_cfg(folder), "lora", _lora_cfg(targets=targets), rules, seed=0)
    module, cfg = stu.model.module, stu.model.config
    tokens, positions, segments, hf_mask = padded_batch(cfg.vocab_size, [13, 7, 10], seed=2)
    fwd = jax.jit(lambda p: module.forward(p, cfg, tokens, positions, segments)[0])
    base = from_pretrained(folder)
    np.testing.assert_array_equal(np.asarray(fwd(stu.model.params)), np.asarray(fwd(base.params)))

    params = _randomise_adapters(stu.model.params)
    ours = np.asarray(fwd(params))
    real = hf_mask.astype(bool)
    assert np.abs(ours - np.asarray(fwd(base.params)))[real].max() > 1e-2
    np.testing.assert_allclose(np.asarray(fwd(lora.merge(params)))[real], ours[real], atol=1e-4, rtol=0)

    paths = export.export(dataclasses.replace(stu.model, params=params), str(tmp_path / "export"),
                          tokenizer_from=str(folder), dtype=jnp.float32, lora_cfg=stu.lora, base_model=str(folder))
    merged = transformers.AutoModelForCausalLM.from_pretrained(paths["hf"], attn_implementation="eager",
                                                               dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_logits(merged, tokens, positions, hf_mask)[real], ours[real], atol=1e-4, rtol=0)

    adapter = json.loads((tmp_path / "export" / "peft" / "adapter_config.json").read_text())
    if family == "gpt_oss":
        want = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] + (["mlp.router.weight"] if targets else [])
        assert sorted(adapter["target_parameters"]) == sorted(want) and adapter["target_modules"] == sorted(ATTENTION)
        assert adapter["lora_dropout"] == 0.0  # peft's ParamWrapper allows no other (identity at inference)
    else:
        assert adapter["target_parameters"] is None and adapter["target_modules"] == sorted(ATTENTION + MLP + DELTANET)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf_base, paths["peft"]).eval()
    theirs = torch_logits(peft_model, tokens, positions, hf_mask)
    np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4, rtol=0)
