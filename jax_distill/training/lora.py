"""Hand-written LoRA over any student's parameter tree.

An adapted projection is the pytree `Adapted(base, LoRA(a, b))` from models/layers.py, so every LoRA set
is a type filter: "train only LoRA" = the `LoRA` leaves, "save only LoRA" = the same leaves, "merge" =
`layers.weight`, "base only" = everything that is not a `LoRA`. By default the targets are the weights
whose ParamSpec declares a `lora_role` (each family declares every attention / token-mixer and MLP
projection: Qwen3.5's DeltaNet projections, gpt-oss's experts; gpt-oss's router stays frozen); a regex
over parameter paths ("layers/q_proj") chooses others. A weight [*stack, in, out] (stack axes: layers,
experts) gets adapters a [*stack, in, r], b [*stack, r, out] with the same leading logical axes, so they
shard like their base; b is zero, so step 0 is exactly the base model. PEFT stores per layer lora_A
[r, in] and lora_B [out, r] with scaling alpha / r (stacked experts: [E*r, in] and [out, r*E]):
`peft_tensors` does that split and transpose.
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

STACK_AXES = ("layers", "experts")  # leading axes of a stacked weight; its last two are [in, out]


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """The adapter recipe, declared once: the training config's `lora` section is built from these
    fields and defaults (`as_config`) and read back with `from_config`."""

    rank: int = 64  # r: adapter width
    alpha: float = 32.0  # adapter output scaled by alpha / rank
    dropout: float = 0.05  # on the adapter input, training only
    # "" = the family's declared projections (ParamSpec.lora_role: every attention, token-mixer and MLP
    # projection); else a regex searched in "/"-joined parameter paths such as "layers/q_proj"
    targets: str = ""

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


def adaptable(spec: ParamSpec) -> bool:
    """A matrix [in, out], possibly behind stacking axes (layers, experts): what an adapter can sit on."""
    if len(spec.shape) < 2:
        return False
    *stack, d_in, d_out = spec.axes
    return all(a in STACK_AXES for a in stack) and not {d_in, d_out} & set(STACK_AXES)


def target_paths(specs: Any, cfg: LoRAConfig) -> list[str]:
    """Paths of the weights to adapt: those declaring a lora_role (targets ""), else the matrices the
    regex selects."""
    flat = [(path_str(p), s) for p, s in jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]]
    if not cfg.targets:
        found = [name for name, spec in flat if spec.lora_role is not None]
        bad = [name for name, spec in flat if spec.lora_role is not None and not adaptable(spec)]
        if bad:
            raise ValueError(f"parameters {bad} declare a lora_role but are no [*stack, in, out] matrix")
        if not found:
            raise ValueError("lora.targets is empty and this family declares no LoRA projections; set a regex")
        return found
    pattern = re.compile(cfg.targets)
    found = [name for name, spec in flat if pattern.search(name) and adaptable(spec)]
    if not found:
        raise ValueError(f"lora.targets {cfg.targets!r} matches no weight; parameter paths are {[n for n, _ in flat]}")
    return found


def lora_specs(spec: ParamSpec, rank: int) -> tuple[ParamSpec, ParamSpec]:
    """Specs of a and b for a base weight spec [*stack, in, out]: shapes and logical axes derived (the
    stack axes, e.g. experts, shard like the base's)."""
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


def param_counts(specs: Any, lora_mode: bool) -> dict:
    """Parameter counts of an (adapted) spec tree, for the run's summary: total (base + adapters),
    trainable and frozen, trainable by role (an adapter counts under its base's lora_role; in full
    fine-tuning every weight under its own; "other" where none is declared) and, with LoRA, the adapted
    paths."""
    size = lambda s: int(np.prod(s.shape))  # noqa: E731
    total, trainable, by_role, adapted = 0, 0, {}, []
    is_leaf = lambda x: isinstance(x, (Adapted, ParamSpec))  # noqa: E731
    for path, node in jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_leaf)[0]:
        base = node.base if isinstance(node, Adapted) else node
        n_lora = size(node.lora.a) + size(node.lora.b) if isinstance(node, Adapted) else 0
        total += size(base) + n_lora
        n_trained = n_lora if lora_mode else size(base)
        if isinstance(node, Adapted):
            adapted.append(path_str(path))
        if n_trained:
            trainable += n_trained
            role = base.lora_role or "other"
            by_role[role] = by_role.get(role, 0) + n_trained
    out = {"total": total, "trainable": trainable, "frozen": total - trainable, "trainable_by_role": by_role}
    if lora_mode:
        out["adapted"] = adapted
    return out


# ----------------------------------------------------------------------------- PEFT export


def peft_tensors(params: Any, wmap: dict, dtype=np.float32) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """PEFT adapter tensors, target_modules and target_parameters, from the stacked adapters of `params`
    and the family's HF weight map.

    An nn.Linear projection (HF [out, in], ours [in, out]) is a target module: lora_A [r, in] = a.T,
    lora_B [out, r] = b.T. A `peft_parameter` tensor is a target parameter (peft's ParamWrapper): a 2-D
    one as a projection; stacked experts [E, in, out] (HF's layout is ours) as lora_A [E*r, in] whose row
    e*r + k is a[e, :, k] and lora_B [out, r*E] whose column k*E + e is b[e, k, :], since peft reads them
    back as A.reshape(E, r, in) and B.reshape(out, r, E). Several target parameters of one module nest:
    the first in registration order is innermost, so it is stored under "<module>.base_layer" once per
    wrapper around it.
    """
    from jax_distill.models.hf_io import host_array

    tensors, modules, parameters = {}, set(), []
    wrapped: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}  # HF module -> its adapted parameters
    for path, t in wmap.items():
        node = params
        try:
            for name in path:
                node = node[name]
        except (KeyError, TypeError):
            continue
        if not isinstance(node, Adapted):
            continue
        where = f"PEFT export: {'/'.join(path)} ({t.key})"
        if t.write is not None or (t.read is not None and not t.peft_parameter):
            raise ValueError(f"{where} maps to a fused or custom HF layout peft cannot express")
        a, b = host_array(node.lora.a), host_array(node.lora.b)
        for layer in range(a.shape[0]) if t.layered else [None]:
            la, lb = (a[layer], b[layer]) if layer is not None else (a, b)
            module, _, param = t.hf_key(layer).rpartition(".")
            if la.ndim == 3:  # stacked experts: [E, in, r], [E, r, out]
                if not t.peft_parameter or t.transpose:
                    raise ValueError(f"{where}: stacked experts export only as untransposed target parameters")
                E, d_in, r = la.shape
                lora_a = la.transpose(0, 2, 1).reshape(E * r, d_in)
                lora_b = lb.transpose(2, 1, 0).reshape(lb.shape[-1], r * E)
            else:
                if not t.transpose:
                    raise ValueError(f"{where}: HF does not store this weight as [out, in]")
                lora_a, lora_b = la.T, lb.T
            if t.peft_parameter:
                wrapped.setdefault(module, []).append((param, lora_a, lora_b))
                pattern = t.key.split("{i}.", 1)[-1]  # peft matches by suffix: the same parameter of every layer
                if pattern not in parameters:
                    parameters.append(pattern)
                continue
            if param != "weight":
                raise ValueError(f"{where} is no module weight")
            tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a
            tensors[f"base_model.model.{module}.lora_B.weight"] = lora_b
            modules.add(module.rsplit(".", 1)[-1])
    for module, params_of_module in wrapped.items():
        for j, (_, lora_a, lora_b) in enumerate(params_of_module):
            name = f"base_model.model.{module}" + ".base_layer" * (len(params_of_module) - 1 - j)
            tensors[f"{name}.lora_A.weight"] = lora_a
            tensors[f"{name}.lora_B.weight"] = lora_b
    if not tensors:
        raise ValueError("PEFT export: the parameters hold no LoRA adapters")
    tensors = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in tensors.items()}
    return tensors, sorted(modules), parameters


def save_peft(params: Any, wmap: dict, folder, cfg: LoRAConfig, base_model: str = "") -> Path:
    """adapter_config.json + adapter_model.safetensors, loadable by peft.PeftModel.from_pretrained.

    With target parameters (gpt-oss's experts) the file says lora_dropout 0: peft's ParamWrapper refuses
    any other value, and dropout is the identity at inference anyway (training used `cfg.dropout`)."""
    from safetensors.numpy import save_file

    tensors, modules, parameters = peft_tensors(params, wmap)
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
        "lora_dropout": 0.0 if parameters else cfg.dropout,
        "target_modules": modules,
        "target_parameters": parameters or None,
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
