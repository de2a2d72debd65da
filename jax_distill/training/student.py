"""The student to train: loaded (local or gs:// HF folder) or random, born sharded, LoRA applied, and
split into the trainable and frozen halves with matching sharding trees."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jax_distill.models import Model, config_from_hf, family_module, from_pretrained, hf_io
from jax_distill.models.layers import init_params
from jax_distill.parallel.sharding import ShardingRules, tree_shardings
from jax_distill.training import lora


@dataclasses.dataclass
class Student:
    model: Model  # params include the adapters (Adapted leaves) in LoRA mode
    specs: Any  # ParamSpec tree matching model.params (adapted)
    shardings: Any  # NamedSharding tree matching model.params
    lora: lora.LoRAConfig | None

    def split(self, tree: Any) -> tuple[Any, Any]:
        """(trainable, frozen) halves of a tree shaped like the params."""
        return lora.partition(tree, lora.lora_only if self.lora else lora.everything)


def load(model_cfg: ConfigDict, method: str, lora_cfg: ConfigDict, rules: ShardingRules, seed: int) -> Student:
    param_dtype = jnp.dtype(model_cfg.param_dtype)
    if model_cfg.path:
        model = from_pretrained(model_cfg.path, dtype=param_dtype, compute_dtype=model_cfg.compute_dtype, rules=rules)
    else:
        family, cfg = config_from_hf(model_cfg.hf.to_dict(), dtype=jnp.dtype(model_cfg.compute_dtype).name)
        specs = family_module(family).param_specs(cfg)
        init = jax.jit(lambda k: init_params(specs, k, param_dtype), out_shardings=tree_shardings(specs, rules))
        model = Model(family, cfg, init(jax.random.key(model_cfg.seed)))
    specs = model.module.param_specs(model.config)
    lcfg = None
    if method == "lora":
        lcfg = lora.LoRAConfig.from_config(lora_cfg)
        adapted = lora.adapted_specs(specs, lcfg)
        shardings = tree_shardings(adapted, rules)
        params = lora.apply(model.params, specs, lcfg, jax.random.key(seed), shardings)
        model = dataclasses.replace(model, params=params)
        specs = adapted
    return Student(model, specs, tree_shardings(specs, rules), lcfg)


def tokenizer_path(model_path: str, tokenizer: str) -> str:
    """The tokenizer folder (gs:// copied locally once)."""
    return str(hf_io.local_folder(tokenizer or model_path))
