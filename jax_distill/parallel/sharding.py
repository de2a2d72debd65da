"""Logical axis names -> mesh axes (data, fsdp, tensor).

Parameters and activations name their axes logically ("embed", "mlp", "batch"...); a rules table maps
each name to zero or more mesh axes. The same model code then runs on one CPU, 8 simulated devices,
a GPU or a TPU slice: only the mesh and the rules change.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_distill.params import ParamSpec

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


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """A mesh plus the logical-axis table; turns logical axes into NamedShardings."""

    mesh: Mesh
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES

    def __post_init__(self):
        for name, target in self.rules:
            for axis in _as_tuple(target):
                if axis not in self.mesh.axis_names:
                    raise ValueError(f"sharding rule {name!r} -> {axis!r}: mesh has axes {self.mesh.axis_names}")

    def spec(self, axes: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
        """PartitionSpec for logical axes; a mesh axis is used once, and only where it divides the dim."""
        table = dict(self.rules)
        used: set[str] = set()
        out = []
        for i, name in enumerate(axes):
            if name is not None and name not in table:
                raise KeyError(f"no sharding rule for logical axis {name!r}")
            mesh_axes = tuple(a for a in _as_tuple(table.get(name)) if a not in used and self.mesh.shape[a] > 1)
            if shape is not None:
                size = int(np.prod([self.mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
                if shape[i] % size:
                    mesh_axes = ()
            used.update(mesh_axes)
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
        return PartitionSpec(*out)

    def sharding(self, axes: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(axes, shape))

    def shards(self, axis: str) -> int:
        """How many pieces the logical axis is split into (the product of its mesh axes' sizes)."""
        return int(np.prod([self.mesh.shape[a] for a in _as_tuple(dict(self.rules)[axis])]))


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
    """NamedShardings for a tree of ParamSpecs."""
    return jax.tree.map(lambda s: rules.sharding(s.axes, s.shape), specs, is_leaf=lambda x: isinstance(x, ParamSpec))
