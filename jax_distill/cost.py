"""What a training run will cost, before it starts: tokens, model FLOPs and accelerator-hours.

FLOPs per trained token follow training/metrics.py (the same figure MFU is measured against):
6 N for full fine-tuning (forward 2N + backward 4N), 4 N in LoRA mode (frozen weights need no weight
gradient; the adapters' own FLOPs are under 1% and left out), plus attention's 12 * layers * width *
seq_len. N counts the parameters a token passes through: embedding lookups are not matmuls (a tied
embedding counts once, as the output projection); a mixture-of-experts layer counts its experts
at top-k / num_experts. Accelerator-hours = FLOPs / (MFU * peak), with the peak bf16 dense figures of
`training.metrics.PEAK_FLOPS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

# Chip names a plan may state -> the device-kind key of training.metrics.PEAK_FLOPS.
CHIPS = {"h100": "H100", "h200": "H200", "v5e": "v5e", "v5p": "v5p", "v6e": "v6"}
DEFAULT_MFU = 0.4

# Published sizes for students whose config.json is not readable when planning (gs:// without access):
# name -> (total parameters, active per token, layers, width). Sources: the model cards.
NOMINAL = {
    "qwen3.5-0.8b-base": (0.8e9, 0.8e9, 24, 1024),
    "qwen3.5-9b-base": (9.0e9, 9.0e9, 32, 4096),
    "llama-3.1-8b": (8.03e9, 8.03e9, 32, 4096),
    "gpt-oss-20b": (20.9e9, 3.6e9, 24, 2880),
}


@dataclasses.dataclass(frozen=True)
class ModelSize:
    total: float  # parameters stored
    active: float  # parameters a token's matmuls pass through (N above)
    layers: int
    width: int
    source: str  # "config.json" or "nominal"


def size_from_hf(hf: dict) -> ModelSize:
    """Count parameters from an HF config through the family's own parameter table (no weights)."""
    from jax_distill.models import config_from_hf

    return size_of(*config_from_hf(hf), source="config.json")


def size_of(family: str, cfg, source: str) -> ModelSize:
    """Count the parameters of a family config (see the module docstring for N)."""
    from jax_distill.models import family_module

    specs = family_module(family).param_specs(cfg)
    total = active = 0.0

    def walk(node, path):
        nonlocal total, active
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
            return
        n = float(math.prod(node.shape))
        total += n
        if path == ("embed",) and not getattr(cfg, "tie_word_embeddings", False):
            return  # a lookup, not a matmul
        if "experts" in node.axes:
            n *= cfg.num_experts_per_token / cfg.num_experts
        active += n

    walk(specs, ())
    return ModelSize(total, active, cfg.num_layers, cfg.hidden_size, source)


def model_size(path: str) -> ModelSize:
    """From the student folder's config.json when it is readable here, else the nominal table (by the
    folder's name); raises naming the path when neither knows the model."""
    config = Path(path) / "config.json"
    if not str(path).startswith("gs://") and config.exists():
        return size_from_hf(json.loads(config.read_text()))
    key = Path(str(path).rstrip("/")).name.lower()
    if key in NOMINAL:
        total, active, layers, width = NOMINAL[key]
        return ModelSize(total, active, layers, width, "nominal")
    raise ValueError(f"cost plan: cannot size student {path!r}: no readable config.json and not one of {sorted(NOMINAL)}")


def flops_per_token(size: ModelSize, method: str, seq_len: int) -> float:
    from jax_distill.training.metrics import flops_per_token as measured

    frozen, trainable = (size.active, 0) if method == "lora" else (0, size.active)
    return measured(frozen, trainable, size.layers, size.width, seq_len)


def run_cost(size: ModelSize, method: str, tokens: float, seq_len: int, chip: str, mfu: float) -> dict:
    """FLOPs and accelerator-hours of one run on `chip` at `mfu`."""
    from jax_distill.training.metrics import PEAK_FLOPS

    if chip not in CHIPS:
        raise ValueError(f"cost plan: chip must be one of {', '.join(CHIPS)}; got {chip!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"cost plan: mfu must be in (0, 1]; got {mfu}")
    flops = flops_per_token(size, method, seq_len) * tokens
    return {
        "tokens": tokens,
        "params": size.total,
        "active_params": size.active,
        "size_from": size.source,
        "flops": flops,
        "chip_hours": flops / (mfu * PEAK_FLOPS[CHIPS[chip]]) / 3600.0,
    }
