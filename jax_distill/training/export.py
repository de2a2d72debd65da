"""End-of-training exports: the student as a Hugging Face folder (LoRA merged) and, in LoRA mode, a PEFT
adapter (adapter_config.json + adapter_model.safetensors) that transformers + peft load on the base it
names (the student's folder, or a random init's weights written beside it)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from jax_distill.models import Model, save_pretrained
from jax_distill.models.layers import Adapted
from jax_distill.training import lora


def export(model: Model, out_dir: str, *, tokenizer_from: str | None, dtype: Any, lora_cfg: lora.LoRAConfig | None,
           base_model: str = "") -> dict[str, str]:
    """Write <out_dir>/hf (merged) and, with `lora_cfg`, <out_dir>/peft, an adapter of the base at
    `base_model` (an absolute local path or gs:// URL, as peft finds it); a random-init base (base_model
    "") is written to <out_dir>/base for the adapter to name. Returns the folders written by kind."""
    # merge on device in one call, then hand host arrays to the writer (no per-tensor device ops)
    merged = _to_host(jax.jit(lora.merge)(model.params))
    paths = {}
    hf_dir = os.path.join(out_dir, "hf")
    save_pretrained(dataclasses.replace(model, params=merged), hf_dir, dtype=dtype, tokenizer_from=tokenizer_from)
    paths["hf"] = hf_dir
    if lora_cfg is not None:
        if not base_model:
            base_model = os.path.join(out_dir, "base")
            base = jax.tree.map(lambda x: x.base if isinstance(x, Adapted) else x, model.params,
                                is_leaf=lambda x: isinstance(x, Adapted))
            save_pretrained(dataclasses.replace(model, params=_to_host(base)), base_model, dtype=dtype,
                            tokenizer_from=tokenizer_from)
            paths["base"] = base_model
        peft_dir = os.path.join(out_dir, "peft")
        lora.save_peft(_to_host(model.params), model.module.weight_map(model.config), peft_dir, lora_cfg, base_model)
        paths["peft"] = peft_dir
    return paths


def _to_host(tree: Any) -> Any:
    """numpy copies of every leaf (gathered across hosts where sharded over several)."""
    from jax_distill.models.hf_io import host_array

    return jax.tree.map(host_array, tree)
