"""Hand-written LoRA over any student's parameter tree.

An adapted projection is the pytree `Adapted(base, LoRA(a, b))` from models/layers.py, so every LoRA set
is a type filter: "train only LoRA" = the `LoRA` leaves, "save only LoRA" = the same leaves, "merge" =
`layers.weight`, "base only" = everything that is not a `LoRA`. Targets are chosen by a regex over
parameter paths ("layers/q_proj"); stacked layer weights [L, in, out] get stacked adapters a [L, in, r],
b [L, r, out], with b zero so step 0 is exactly the base model. PEFT stores per layer lora_A [r, in] and
lora_B [out, r] with scaling alpha / r: `peft_tensors` does that split and transpose.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jax_distill.models.layers import Adapted, LoRA, weight
from jax_distill.params import ParamSpec

# Every attention and MLP projection of every dense family (the paper's choice).
DEFAULT_TARGETS = r"(^|/)(q|k|v|o|gate|up|down)_proj$"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """The adapter recipe, declared once: the training config's `lora` section is built from these
    fields and defaults (`as_config`) and read back with `from_config`."""

    rank: int = 64  # r: adapter width
    alpha: float = 32.0  # adapter output scaled by alpha / rank
    dropout: float = 0.05  # on the adapter input, training only
    targets: str = DEFAULT_TARGETS  # regex searched in "/"-joined parameter paths such as "layers/q_proj"

    @classmethod
    def as_config(cls) -> ConfigDict:
        return ConfigDict(dataclasses.asdict(cls()))

    @classmethod
    def from_config(cls, cfg: ConfigDict) -> LoRAConfig:
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def path_str(path) -> str:
    """"layers/q_proj" for a jax key path (dict keys, attribute names and indices alike)."""
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def _is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def target_paths(specs: Any, cfg: LoRAConfig) -> list[str]:
    """Paths of the 2-D (or stacked 3-D) weights the target regex selects."""
    pattern = re.compile(cfg.targets)
    found = []
    for path, spec in jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]:
        name = path_str(path)
        if pattern.search(name) and len(spec.shape) in (2, 3):
            found.append(name)
    if not found:
        names = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]]
        raise ValueError(f"lora.targets {cfg.targets!r} matches no weight; parameter paths are {names}")
    return found


def lora_specs(spec: ParamSpec, rank: int) -> tuple[ParamSpec, ParamSpec]:
    """Specs of a and b for a base weight spec [(L,) in, out]: shapes and logical axes derived."""
    *lead, d_in, d_out = spec.shape
    *lead_axes, ax_in, ax_out = spec.axes
    a = ParamSpec((*lead, d_in, rank), (*lead_axes, ax_in, "lora_rank"), "normal", 1.0 / math.sqrt(d_in))
    b = ParamSpec((*lead, rank, d_out), (*lead_axes, "lora_rank", ax_out), "zeros")
    return a, b


def adapted_specs(specs: Any, cfg: LoRAConfig) -> Any:
    """The spec tree with each target replaced by Adapted(base spec, LoRA(a spec, b spec))."""
    targets = set(target_paths(specs, cfg))

    def convert(path, spec):
        if path_str(path) not in targets:
            return spec
        a, b = lora_specs(spec, cfg.rank)
        return Adapted(spec, LoRA(a, b, cfg.scale, cfg.dropout))

    return jax.tree_util.tree_map_with_path(convert, specs, is_leaf=_is_spec)


def apply(params: Any, specs: Any, cfg: LoRAConfig, key: jax.Array, shardings: Any = None) -> Any:
    """Wrap target weights of `params` in fresh adapters (fp32), all initialised in one jitted call;
    with `shardings` (of the adapted spec tree) adapters are born sharded like their base."""
    targets = sorted(target_paths(specs, cfg))
    flat_specs = {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]}
    pairs = {name: lora_specs(flat_specs[name], cfg.rank) for name in targets}
    out_shardings = None
    if shardings is not None:
        is_ns = lambda x: isinstance(x, jax.sharding.Sharding)
        flat_shard = {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings, is_leaf=is_ns)[0]}
        out_shardings = {n: (flat_shard[n + "/lora/a"], flat_shard[n + "/lora/b"]) for n in targets}

    def init(key):
        keys = jax.random.split(key, len(targets))
        return {n: (a.initialize(k, jnp.float32), b.initialize(k, jnp.float32)) for (n, (a, b)), k in zip(pairs.items(), keys)}

    adapters = jax.jit(init, out_shardings=out_shardings)(key)

    def convert(path, w):
        name = path_str(path)
        if name not in adapters:
            return w
        a, b = adapters[name]
        return Adapted(w, LoRA(a, b, cfg.scale, cfg.dropout))

    return jax.tree_util.tree_map_with_path(convert, params)


# ----------------------------------------------------------------------------- filters


def _is_lora(x) -> bool:
    return isinstance(x, LoRA)


def partition(params: Any, trainable: Callable[[Any], bool]) -> tuple[Any, Any]:
    """(trainable, frozen): two trees of params' structure with None where the other one holds a leaf.
    Leaves are arrays and whole LoRA nodes; `trainable(leaf)` decides."""
    leaves, treedef = jax.tree.flatten(params, is_leaf=_is_lora)
    train = [x if trainable(x) else None for x in leaves]
    frozen = [None if trainable(x) else x for x in leaves]
    return treedef.unflatten(train), treedef.unflatten(frozen)


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of `partition`."""
    is_leaf = lambda x: x is None or _is_lora(x)
    a, treedef = jax.tree.flatten(trainable, is_leaf=is_leaf)
    b = jax.tree.leaves(frozen, is_leaf=is_leaf)
    return treedef.unflatten([x if x is not None else y for x, y in zip(a, b)])


def lora_only(x) -> bool:
    return _is_lora(x)


def everything(x) -> bool:
    return True


def merge(params: Any) -> Any:
    """Dense parameters with every adapter folded into its base weight."""
    return jax.tree.map(lambda x: weight(x) if isinstance(x, Adapted) else x, params, is_leaf=lambda x: isinstance(x, Adapted))


def count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- PEFT export


def peft_tensors(params: Any, wmap: dict, dtype=np.float32) -> tuple[dict[str, np.ndarray], list[str]]:
    """PEFT adapter tensors {base_model.model.<module>.lora_A.weight: [r, in], lora_B: [out, r]} and the
    target module names, from the stacked adapters of `params` and the family's HF weight map."""
    from jax_distill.models.hf_io import host_array

    tensors, modules = {}, set()
    for path, t in wmap.items():
        node = params
        try:
            for name in path:
                node = node[name]
        except (KeyError, TypeError):
            continue
        if not isinstance(node, Adapted):
            continue
        if t.write is not None or t.read is not None or not t.key.endswith(".weight") or not t.transpose:
            raise ValueError(f"PEFT export: {'/'.join(path)} maps to a fused or custom HF layout ({t.key})")
        a, b = host_array(node.lora.a), host_array(node.lora.b)
        layers = range(a.shape[0]) if t.layered else [None]
        for layer in layers:
            module = t.hf_key(layer)[: -len(".weight")]
            la, lb = (a[layer], b[layer]) if layer is not None else (a, b)
            tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(la.T.astype(dtype))
            tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(lb.T.astype(dtype))
            modules.add(module.rsplit(".", 1)[-1])
    if not tensors:
        raise ValueError("PEFT export: the parameters hold no LoRA adapters")
    return tensors, sorted(modules)


def save_peft(params: Any, wmap: dict, folder, cfg: LoRAConfig, base_model: str = "") -> Path:
    """adapter_config.json + adapter_model.safetensors, loadable by peft.PeftModel.from_pretrained."""
    from safetensors.numpy import save_file

    tensors, modules = peft_tensors(params, wmap)
    folder = Path(folder)
    if jax.process_index() != 0:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
