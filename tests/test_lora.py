"""LoRA: targets by regex, zero-init B, frozen base, merged export and PEFT export parity."""

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


def _lora_cfg(rank=4, alpha=8.0, dropout=0.05, targets=lora.DEFAULT_TARGETS):
    return ConfigDict(dict(rank=rank, alpha=alpha, dropout=dropout, targets=targets))


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
    assert sorted(lora.target_paths(specs, lora.LoRAConfig())) == sorted(
        f"layers/{p}_proj" for p in ("q", "k", "v", "o", "gate", "up", "down")
    )
    assert lora.target_paths(specs, lora.LoRAConfig(targets=r"layers/(q|v)_proj$")) == ["layers/q_proj", "layers/v_proj"]
    with pytest.raises(ValueError, match="matches no weight.*layers/q_proj"):
        lora.target_paths(specs, lora.LoRAConfig(targets="qproj"))
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
