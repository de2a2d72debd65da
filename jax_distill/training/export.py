"""End-of-training exports: the student as a Hugging Face folder (LoRA merged) and, in LoRA mode, a PEFT
adapter (adapter_config.json + adapter_model.safetensors) that transformers + peft load on the base."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from jax_distill.models import Model, save_pretrained
from jax_distill.training import lora


def export(model: Model, out_dir: str, *, tokenizer_from: str | None, dtype: Any, lora_cfg: lora.LoRAConfig | None,
           base_model: str = "") -> dict[str, str]:
    """Write <out_dir>/hf (merged) and, with `lora_cfg`, <out_dir>/peft; returns their paths."""
    # merge on device in one call, then hand host arrays to the writer (no per-tensor device ops)
    merged = _to_host(jax.jit(lora.merge)(model.params))
    paths = {}
    hf_dir = os.path.join(out_dir, "hf")
    save_pretrained(dataclasses.replace(model, params=merged), hf_dir, dtype=dtype, tokenizer_from=tokenizer_from)
    paths["hf"] = hf_dir
    if lora_cfg is not None:
        peft_dir = os.path.join(out_dir, "peft")
        lora.save_peft(_to_host(model.params), model.module.weight_map(model.config), peft_dir, lora_cfg, base_model)
        paths["peft"] = peft_dir
    return paths


def _to_host(tree: Any) -> Any:
    """numpy copies of every leaf (gathered across hosts where sharded over several)."""
    from jax_distill.models.hf_io import host_array

    return jax.tree.map(host_array, tree)
