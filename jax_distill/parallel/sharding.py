"""Logical axis names -> mesh axes (data, fsdp, tensor).

Parameters and activations name their axes logically ("embed", "mlp", "batch"...); a rules table maps
each name to zero or more mesh axes. The same model code then runs on one CPU, 8 simulated devices,
a GPU or a TPU slice: only the mesh and the rules change.

A layout the rules cannot give is an error, not a quiet replication: two logical axes of one array on
the same mesh axis, or a dimension its mesh axes do not divide. Two cases are replicated on purpose and
recorded (`ShardingRules.replicated`, one warning each): a vocabulary (its size is the tokenizer's,
not ours to pick) and a parameter vector (a bias, norm scale or per-head sink costs nothing whole).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_distill.params import ParamSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Default rules: weights are split over fsdp on their model dimension and over tensor on heads / MLP
# width / vocab; batches are split over data and fsdp together.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("experts", None),
    ("lora_rank", None),
    ("norm", None),
    ("conv", None),
)


class ShardingError(ValueError):
    """An array cannot be laid out on the mesh as the rules say."""


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """A mesh plus the logical-axis table; turns logical axes into NamedShardings."""

    mesh: Mesh
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES
    # what was replicated on purpose (parameter path, or an activation's axes) -> why; for a run to report
    replicated: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        for name, target in self.rules:
            for axis in _as_tuple(target):
                if axis not in self.mesh.axis_names:
                    raise ValueError(f"sharding rule {name!r} -> {axis!r}: mesh has axes {self.mesh.axis_names}")

    def spec(
        self, axes: Sequence[str | None], shape: Sequence[int] | None = None, name: str | None = None
    ) -> PartitionSpec:
        """PartitionSpec for an array's logical axes; `name` is the parameter's path (None: an activation).

        Each mesh axis serves one logical axis of an array, whatever its size (a colliding table fails on
        one CPU too). The one exception is the batch: activations split their batch over fsdp where
        weights split their embed dim, so on an activation the batch keeps its mesh axes and later axes
        do without them. A dimension its mesh axes do not divide raises, unless it is replicated on
        purpose (see the module docstring).
        """
        table = dict(self.rules)
        what = f"parameter {name!r}" if name is not None else "activation"
        what += f" with axes {tuple(axes)}" + ("" if shape is None else f" and shape {tuple(shape)}")
        owner: dict[str, str] = {}  # mesh axis -> the logical axis using it
        out = []
        for i, axis in enumerate(axes):
            if axis is not None and axis not in table:
                raise KeyError(f"no sharding rule for logical axis {axis!r} ({what})")
            mesh_axes = []
            for a in _as_tuple(table.get(axis)):
                if owner.get(a) == "batch":
                    continue
                if a in owner:
                    raise ShardingError(f"{what}: logical axes {owner[a]!r} and {axis!r} both map to mesh axis {a!r}")
                owner[a] = axis
                if self.mesh.shape[a] > 1:
                    mesh_axes.append(a)
            size = int(np.prod([self.mesh.shape[a] for a in mesh_axes]))
            if shape is not None and shape[i] % size:
                why = f"dim {i} ({axis!r}, size {shape[i]}) does not divide over mesh axes {tuple(mesh_axes)} ({size})"
                reason = _replicated_on_purpose(axes, axis, name)
                if reason is None:
                    raise ShardingError(f"{what}: {why}; choose mesh sizes or rules that divide it")
                self._record(name or f"activation {tuple(axes)}", f"{why}; replicated ({reason})")
                mesh_axes = []
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else (tuple(mesh_axes) or None))
        return PartitionSpec(*out)

    def sharding(
        self, axes: Sequence[str | None], shape: Sequence[int] | None = None, name: str | None = None
    ) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(axes, shape, name))

    def shards(self, axis: str) -> int:
        """How many pieces the logical axis is split into (the product of its mesh axes' sizes)."""
        return int(np.prod([self.mesh.shape[a] for a in _as_tuple(dict(self.rules)[axis])]))

    def _record(self, key: str, why: str) -> None:
        if key not in self.replicated:
            self.replicated[key] = why
            log.warning("sharding: %s: %s", key, why)


def _replicated_on_purpose(axes: Sequence[str | None], axis: str | None, name: str | None) -> str | None:
    """Why a dimension that does not divide may stay whole, or None where that is an error."""
    if axis == "vocab":
        return "a vocabulary's size is the tokenizer's"
    if name is not None and sum(a != "layers" for a in axes) == 1:
        return "a parameter vector costs little whole"
    return None


def _as_tuple(target) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 for "all remaining devices"."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh size may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide by fixed mesh sizes {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


_ACTIVE: contextvars.ContextVar[ShardingRules | None] = contextvars.ContextVar("sharding_rules", default=None)


@contextlib.contextmanager
def use_rules(rules: ShardingRules | None) -> Iterator[None]:
    """Activate rules for `constrain` inside model code while tracing."""
    token = _ACTIVE.set(rules)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding at a block boundary (only when rules are active)."""
    rules = _ACTIVE.get()
    if rules is None:
        return x
    return jax.lax.with_sharding_constraint(x, rules.sharding(axes, x.shape))


def tree_shardings(specs: Any, rules: ShardingRules) -> Any:
    """NamedShardings for a tree of ParamSpecs; errors and `rules.replicated` name each by its path."""

    def one(path, spec: ParamSpec) -> NamedSharding:
        return rules.sharding(spec.axes, spec.shape, jax.tree_util.keystr(path, simple=True, separator="/"))

    return jax.tree_util.tree_map_with_path(one, specs, is_leaf=lambda x: isinstance(x, ParamSpec))
