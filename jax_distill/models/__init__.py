"""Student model families and their Hugging Face import/export.

Each family module (llama, qwen3, qwen3_5, gpt_oss) exposes the same functions:
  Config.from_hf(dict) / cfg.to_hf()     configuration, mirrored both ways
  param_specs(cfg)                        tree of ParamSpec (shape, logical axes, init)
  weight_map(cfg)                         our parameter path -> HFTensor
  hidden_states / unembed / forward       the model, pure functions of (params, cfg, ...)
  init_cache(cfg, batch, max_len, dtype)  decoding state
and optionally IGNORED_KEYS (regexes of HF tensors that may be present and are skipped).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp

from jax_distill.models import hf_io
from jax_distill.models.hf_io import CheckpointError
from jax_distill.models.layers import init_params

# HF `architectures[0]` -> family module name
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3_5ForCausalLM": "qwen3_5",
    "Qwen3_5ForConditionalGeneration": "qwen3_5",
    "GptOssForCausalLM": "gpt_oss",
}


def family_module(name: str) -> ModuleType:
    """The family module for a family name ("llama") or an HF architecture name."""
    name = ARCHITECTURES.get(name, name)
    if name not in set(ARCHITECTURES.values()):
        raise CheckpointError(f"unknown architecture {name!r}; supported: {sorted(ARCHITECTURES)}")
    return importlib.import_module(f"jax_distill.models.{name}")


@dataclasses.dataclass
class Model:
    """A family, its config and its parameters: everything needed to run or export a student."""

    family: str
    config: Any
    params: Any

    @property
    def module(self) -> ModuleType:
        return family_module(self.family)

    def forward(self, tokens, positions, segment_ids, cache=None, **kwargs):
        return self.module.forward(self.params, self.config, tokens, positions, segment_ids, cache, **kwargs)


def config_from_hf(hf: dict, **overrides) -> tuple[str, Any]:
    archs = hf.get("architectures") or []
    if not archs:
        raise CheckpointError("config.json has no 'architectures' entry")
    family = ARCHITECTURES.get(archs[0])
    if family is None:
        raise CheckpointError(f"unknown architecture {archs[0]!r}; supported: {sorted(ARCHITECTURES)}")
    return family, family_module(family).Config.from_hf(hf, **overrides)


def from_pretrained(
    path: str | os.PathLike,
    dtype: Any = jnp.float32,
    compute_dtype: Any = None,
    rules=None,
) -> Model:
    """Load an HF folder (local or gs://). `dtype` is the parameter dtype; `compute_dtype` the
    activations' (defaults to `dtype`). With `rules` (ShardingRules) each tensor lands on its shard."""
    folder = hf_io.local_folder(path)
    hf = hf_io.read_config(folder)
    try:
        family, cfg = config_from_hf(hf, dtype=jnp.dtype(compute_dtype or dtype).name)
    except CheckpointError as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    module = family_module(family)
    specs = module.param_specs(cfg)
    shardings = None
    if rules is not None:
        from jax_distill.parallel.sharding import tree_shardings

        shardings = tree_shardings(specs, rules)
    ignore = tuple(getattr(module, "IGNORED_KEYS", ())) + (r"rotary_emb\.inv_freq$",)
    if getattr(cfg, "tie_word_embeddings", False):
        ignore += (r"^lm_head\.weight$",)
    params = hf_io.load_params(folder, specs, module.weight_map(cfg), dtype, shardings, ignore)
    return Model(family, cfg, params)


def save_pretrained(
    model: Model, path: str | os.PathLike, dtype: Any = None, tokenizer_from: str | os.PathLike | None = None
) -> Path:
    """Write the model (LoRA merged) as an HF folder that transformers and vLLM load."""
    module = model.module
    config = getattr(module, "export_config", lambda c: c)(model.config)  # a family may pick the export layout
    tensors = hf_io.iter_hf_tensors(model.params, module.weight_map(config), dtype)
    return hf_io.save_folder(path, config.to_hf(), tensors, tokenizer_from)


def random_model(family: str, config: Any, seed: int = 0, dtype: Any = jnp.float32) -> Model:
    """A randomly initialised student (tests, from-scratch demo students)."""
    module = family_module(family)
    params = init_params(module.param_specs(config), jax.random.key(seed), dtype)
    return Model(family, config, params)
