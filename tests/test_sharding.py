"""Sharding rules: a layout the rules cannot give raises, naming the array; deliberate replication is
warned once and recorded."""

import logging

import pytest
from jax.sharding import PartitionSpec

from jax_distill.parallel.sharding import DEFAULT_RULES, ShardingRules, make_mesh, tree_shardings
from jax_distill.params import ParamSpec


def _rules(data=1, fsdp=2, tensor=4, **overrides) -> ShardingRules:
    table = tuple((name, overrides.get(name, target)) for name, target in DEFAULT_RULES)
    return ShardingRules(make_mesh(data, fsdp, tensor), table)


def test_reused_mesh_axis_raises_naming_the_parameter():
    rules = _rules(experts="tensor")  # experts and mlp both on tensor
    specs = {"layers": {"gate_up_proj": ParamSpec((3, 4, 64, 192), ("layers", "experts", "embed", "mlp"))}}
    with pytest.raises(ValueError, match=r"'layers/gate_up_proj'.*\(3, 4, 64, 192\).*'experts' and 'mlp'.*'tensor'"):
        tree_shardings(specs, rules)


def test_reused_mesh_axis_raises_on_a_mesh_where_it_has_one_device():
    rules = _rules(1, 8, 1, experts="tensor")  # the table collides even where tensor is 1
    specs = {"layers": {"gate_up_bias": ParamSpec((3, 4, 192), ("layers", "experts", "mlp"))}}
    with pytest.raises(ValueError, match=r"'layers/gate_up_bias'.*'experts' and 'mlp' both map to mesh axis 'tensor'"):
        tree_shardings(specs, rules)


def test_dimension_that_does_not_divide_raises_naming_the_parameter():
    specs = {"layers": {"q_proj": ParamSpec((2, 36, 64), ("layers", "embed", "heads"))}}
    with pytest.raises(ValueError, match=r"'layers/q_proj'.*\(2, 36, 64\).*dim 1 \('embed', size 36\).*'fsdp'"):
        tree_shardings(specs, _rules(1, 8, 1))


def test_activation_batch_that_does_not_divide_raises():
    with pytest.raises(ValueError, match=r"activation with axes \('batch', 'seq'\).*\('data', 'fsdp'\)"):
        _rules(2, 2, 2).spec(("batch", "seq"), (6, 16))


def test_vocabulary_and_vectors_that_do_not_divide_are_replicated_with_one_warning(caplog):
    rules = _rules(1, 2, 4)
    specs = {
        "embed": ParamSpec((517, 64), ("vocab", "embed")),  # 517 rows over tensor=4
        "layers": {"sinks": ParamSpec((3, 6), ("layers", "heads"))},  # 6 heads over tensor=4
    }
    with caplog.at_level(logging.WARNING, logger="jax_distill.parallel.sharding"):
        for _ in range(2):
            shardings = tree_shardings(specs, rules)
    assert shardings["embed"].spec == PartitionSpec(None, "fsdp")
    assert shardings["layers"]["sinks"].spec == PartitionSpec(None, None)
    assert sorted(rules.replicated) == ["embed", "layers/sinks"]
    assert "vocabulary" in rules.replicated["embed"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and any("embed" in m for m in warned) and any("layers/sinks" in m for m in warned)


def test_matrix_on_heads_that_does_not_divide_is_not_replicated():
    specs = {"layers": {"o_proj": ParamSpec((3, 6, 64), ("layers", "heads", "embed"))}}
    with pytest.raises(ValueError, match=r"'layers/o_proj'.*dim 1 \('heads', size 6\)"):
        tree_shardings(specs, _rules(1, 2, 4))


def test_activation_batch_keeps_fsdp_and_embed_stays_whole():
    """The one deliberate reuse: an activation's batch takes fsdp, which weights use for embed."""
    rules = _rules(2, 2, 2)
    assert rules.spec(("batch", "seq", "embed"), (8, 16, 64)) == PartitionSpec(("data", "fsdp"), None, None)
    assert rules.spec(("batch", "seq", "vocab"), (8, 16, 64)) == PartitionSpec(("data", "fsdp"), None, "tensor")
    assert rules.replicated == {}
