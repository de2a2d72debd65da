"""Qwen3.5 text model: a hybrid of Gated DeltaNet layers and gated full-attention layers.

The layer schedule is HF's `layer_types` list ("linear_attention" / "full_attention"; 3:1 in released
models). Parameters of each kind are stacked separately (`delta_layers`, `attn_layers`); the forward
finds the smallest repeating period of the schedule and runs `lax.scan` over periods, with one inner
scan per run of same-kind layers inside a period, so each layer kind compiles once whatever the depth.

- Gated attention: q_proj yields, per head, a query and a sigmoid output gate (HF layout [q_h | gate_h]);
  zero-centred RMSNorm on q and k, RoPE on the leading 25% of head_dim (text MRoPE is plain 1-D RoPE,
  all three position axes being equal), GQA, then out * sigmoid(gate) before o_proj.
- Gated DeltaNet: fused in_proj_qkv -> causal depthwise conv (width 4) + silu -> L2-normed q/k, v;
  beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias); the delta rule of `gated_deltanet` (chunked
  for T > 1, recurrent for one-token decode); gated RMSNorm (plain weight, times silu(z)); out_proj.
- RMSNorms are zero-centred (scale 1 + w), except the gated one inside DeltaNet.

Padding and packing: attention layers use segment ids and positions (`layers.attention_mask`); DeltaNet
layers zero padding inputs (as transformers does) and never carry conv or recurrent state across a
segment change (see `gated_deltanet`). The cache holds KV slots for attention layers (same `index`
convention as `llama.init_cache`), conv history + fp32 recurrent state for DeltaNet layers, and the
segment ids of the conv history, so prefill (T = prompt length, left padded) then decode (T = 1) works.

Checkpoints: `Qwen3_5ForConditionalGeneration` (text under `model.language_model.*`; `model.visual.*` and
`mtp.*` skipped) and `Qwen3_5ForCausalLM` load; export is always a text-only `Qwen3_5ForCausalLM`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_distill.models import decoder, hf_io
from jax_distill.models import gated_deltanet as gdn
from jax_distill.models import layers as L
from jax_distill.models.hf_io import CheckpointError, CheckpointReader, HFTensor
from jax_distill.params import ParamSpec

Array = jax.Array
LINEAR, FULL = "linear_attention", "full_attention"
IGNORED_KEYS = (r"^mtp\.", r"^model\.visual\.")
CAUSAL_LM = "Qwen3_5ForCausalLM"


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layer_types: tuple[str, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: L.Rope
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: Any = None
    pad_token_id: int | None = None
    max_position_embeddings: int = 32768
    architecture: str = CAUSAL_LM  # layout loaded from; selects the HF key prefix
    chunk_size: int = 64  # chunk length of the chunked delta rule (training / prefill)
    dtype: str = "float32"  # compute dtype

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "Config":
        arch = (hf.get("architectures") or [CAUSAL_LM])[0]
        text = hf.get("text_config") or hf
        tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        if text.get("attention_bias"):
            raise CheckpointError("Qwen3.5 with attention_bias=true is not supported")
        widths = decoder.widths_from_hf(text)
        rope_params = dict(text.get("rope_parameters") or {})
        partial = text.get("partial_rotary_factor", rope_params.get("partial_rotary_factor", 0.25))
        n = text["num_hidden_layers"]
        interval = text.get("full_attention_interval", 4)
        types = text.get("layer_types") or [LINEAR if (i + 1) % interval else FULL for i in range(n)]
        if len(types) != n or set(types) - {LINEAR, FULL}:
            raise CheckpointError(f"layer_types must list {n} of {LINEAR!r}/{FULL!r}, got {types}")
        fields = dict(
            **widths,
            layer_types=tuple(types),
            rope=L.Rope.from_hf({**text, "partial_rotary_factor": partial}, widths["head_dim"]),
            linear_num_key_heads=text["linear_num_key_heads"],
            linear_num_value_heads=text["linear_num_value_heads"],
            linear_key_head_dim=text["linear_key_head_dim"],
            linear_value_head_dim=text["linear_value_head_dim"],
            linear_conv_kernel_dim=text.get("linear_conv_kernel_dim", 4),
            rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=tie,
            bos_token_id=_either(text, hf, "bos_token_id"),
            eos_token_id=_either(text, hf, "eos_token_id"),
            pad_token_id=_either(text, hf, "pad_token_id"),
            max_position_embeddings=text.get("max_position_embeddings", 32768),
            architecture=arch,
        )
        if fields["linear_num_value_heads"] % fields["linear_num_key_heads"]:
            raise CheckpointError("linear_num_value_heads must be a multiple of linear_num_key_heads")
        return cls(**{**fields, **overrides})

    def to_hf(self) -> dict:
        """A text-only `Qwen3_5ForCausalLM` config (what `export_config` exports)."""
        return dict(
            architectures=[CAUSAL_LM],
            model_type="qwen3_5_text",
            **decoder.hf_fields(self),
            layer_types=list(self.layer_types),
            linear_num_key_heads=self.linear_num_key_heads,
            linear_num_value_heads=self.linear_num_value_heads,
            linear_key_head_dim=self.linear_key_head_dim,
            linear_value_head_dim=self.linear_value_head_dim,
            linear_conv_kernel_dim=self.linear_conv_kernel_dim,
            attention_bias=False,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": self.rope.theta,
                "partial_rotary_factor": self.rope.rotary_dim / self.head_dim,
            },
            pad_token_id=self.pad_token_id,
        )


def _either(text: dict, hf: dict, key: str):
    """A token id from the text config, else from the outer (multimodal) config."""
    return text[key] if text.get(key) is not None else hf.get(key)


def export_config(cfg: Config) -> Config:
    """The config `save_pretrained` writes: text-only Qwen3_5ForCausalLM (no vision tower to carry)."""
    return dataclasses.replace(cfg, architecture=CAUSAL_LM)


# ----------------------------------------------------------------------------- layer schedule


def layer_ids(cfg: Config, kind: str) -> tuple[int, ...]:
    """HF layer indices of one kind, in the order their parameters are stacked."""
    return tuple(i for i, t in enumerate(cfg.layer_types) if t == kind)


def schedule(cfg: Config) -> tuple[tuple[tuple[str, int], ...], int]:
    """(runs of one period as (kind, count), number of periods): the smallest repeating period."""
    types, n = cfg.layer_types, cfg.num_layers
    period = next(p for p in range(1, n + 1) if n % p == 0 and types == types[:p] * (n // p))
    runs = tuple((kind, len(list(group))) for kind, group in itertools.groupby(types[:period]))
    return runs, n // period


# ----------------------------------------------------------------------------- parameters


def _dims(cfg: Config) -> dict[str, int]:
    nk, nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    dk, dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
    return dict(key=nk * dk, value=nv * dv, conv=2 * nk * dk + nv * dv)


def param_specs(cfg: Config) -> dict:
    D, H = cfg.hidden_size, cfg.head_dim
    NH, KH = cfg.num_heads * H, cfg.num_kv_heads * H
    d = _dims(cfg)
    Nv, W = cfg.linear_num_value_heads, cfg.linear_conv_kernel_dim
    common = {
        "input_norm": ParamSpec((D,), ("norm",), "zeros"),  # zero-centred: scale 1 + w
        "post_norm": ParamSpec((D,), ("norm",), "zeros"),
        **decoder.mlp_specs(cfg),
    }
    mixer = "linear_attention"  # every DeltaNet projection is a LoRA target by default, as attention's are
    delta = common | {
        "in_proj_qkv": ParamSpec((D, d["conv"]), ("embed", "heads"), lora_role=mixer),
        "in_proj_z": ParamSpec((D, d["value"]), ("embed", "heads"), lora_role=mixer),
        "in_proj_b": ParamSpec((D, Nv), ("embed", None), lora_role=mixer),
        "in_proj_a": ParamSpec((D, Nv), ("embed", None), lora_role=mixer),
        "conv1d": ParamSpec((W, d["conv"]), ("conv", "heads"), scale=0.5),
        "dt_bias": ParamSpec((Nv,), (None,), "ones"),
        "A_log": ParamSpec((Nv,), (None,), "zeros"),
        "norm": ParamSpec((cfg.linear_value_head_dim,), ("norm",), "ones"),  # gated norm: plain weight
        "out_proj": ParamSpec((d["value"], D), ("heads", "embed"), lora_role=mixer),
    }
    attn = common | {
        "q_proj": ParamSpec((D, 2 * NH), ("embed", "heads"), lora_role="attention"),  # per head: [query | gate]
        "k_proj": ParamSpec((D, KH), ("embed", "kv_heads"), lora_role="attention"),
        "v_proj": ParamSpec((D, KH), ("embed", "kv_heads"), lora_role="attention"),
        "o_proj": ParamSpec((NH, D), ("heads", "embed"), lora_role="attention"),
        "q_norm": ParamSpec((H,), ("norm",), "zeros"),
        "k_norm": ParamSpec((H,), ("norm",), "zeros"),
    }
    stacks = {"delta_layers": (delta, len(layer_ids(cfg, LINEAR))), "attn_layers": (attn, len(layer_ids(cfg, FULL)))}
    return decoder.stack_specs(cfg, stacks, norm_init="zeros")  # zero-centred final norm


# ----------------------------------------------------------------------------- layers


def gated_deltanet(
    x: Array, p: dict, cfg: Config, ctx: dict, layer_cache: dict | None, keys
) -> tuple[Array, dict | None]:
    """Gated DeltaNet token mixer on normed x [B, T, D] -> ([B, T, D], updated conv/recurrent state)."""
    B, T, _ = x.shape
    d = _dims(cfg)
    Nk, Nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    Dk, Dv, W = cfg.linear_key_head_dim, cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim
    x = jnp.where(ctx["segments"][..., None] != 0, x, 0).astype(x.dtype)  # padding in, zeros (as HF)
    mixed = L.linear(x, p["in_proj_qkv"], dropout_key=keys("in_proj_qkv"))  # [B, T, C]
    z = L.linear(x, p["in_proj_z"], dropout_key=keys("in_proj_z")).reshape(B, T, Nv, Dv)
    b = L.linear(x, p["in_proj_b"], dropout_key=keys("in_proj_b"))  # [B, T, Nv]
    a = L.linear(x, p["in_proj_a"], dropout_key=keys("in_proj_a"))

    if layer_cache is None:
        history = jnp.zeros((B, W - 1, d["conv"]), x.dtype)
        state = jnp.zeros((B, Nv, Dk, Dv), jnp.float32)
    else:
        history, state = layer_cache["conv"], layer_cache["state"]
    mixed, history = gdn.causal_conv(mixed, L.weight(p["conv1d"]), history, ctx["runs"])
    q, k, v = jnp.split(mixed, [d["key"], 2 * d["key"]], axis=-1)
    q = gdn.l2norm(q.reshape(B, T, Nk, Dk).astype(jnp.float32)) * Dk**-0.5
    k = gdn.l2norm(k.reshape(B, T, Nk, Dk).astype(jnp.float32))
    q, k = jnp.repeat(q, Nv // Nk, axis=2), jnp.repeat(k, Nv // Nk, axis=2)  # k head i serves v heads i*G..
    v = v.reshape(B, T, Nv, Dv)
    beta = jax.nn.sigmoid(b).astype(jnp.float32)
    g = -jnp.exp(p["A_log"].astype(jnp.float32)) * jax.nn.softplus(
        a.astype(jnp.float32) + p["dt_bias"].astype(jnp.float32)
    )
    runs, state_run = ctx["runs"][:, W - 1 :], ctx["runs"][:, W - 2]
    if T == 1:
        out, state = gdn.recurrent_gated_delta_rule(q, k, v, g, beta, runs, state, state_run)
    else:
        out, state = gdn.chunk_gated_delta_rule(q, k, v, g, beta, runs, state, state_run, cfg.chunk_size)
    out = L.rms_norm(out.astype(x.dtype), p["norm"], cfg.rms_norm_eps)  # [B, T, Nv, Dv]
    out = (out.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))).astype(x.dtype)
    out = L.linear(out.reshape(B, T, -1), p["out_proj"], dropout_key=keys("out_proj"))
    new_cache = None if layer_cache is None else {"conv": history.astype(layer_cache["conv"].dtype), "state": state}
    return out, new_cache


def gated_attention(
    x: Array, p: dict, cfg: Config, ctx: dict, layer_cache: dict | None, keys
) -> tuple[Array, dict | None]:
    """Full attention with a per-head sigmoid output gate; with a cache, k/v are written at ctx index."""
    B, T, _ = x.shape
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qg = L.linear(x, p["q_proj"], dropout_key=keys("q_proj")).reshape(B, T, N, 2 * H)
    q, gate = qg[..., :H], qg[..., H:].reshape(B, T, N * H)
    k = L.linear(x, p["k_proj"], dropout_key=keys("k_proj")).reshape(B, T, K, H)
    v = L.linear(x, p["v_proj"], dropout_key=keys("v_proj")).reshape(B, T, K, H)
    q = L.rms_norm(q, p["q_norm"], cfg.rms_norm_eps, zero_centered=True)
    k = L.rms_norm(k, p["k_norm"], cfg.rms_norm_eps, zero_centered=True)
    q, k = L.apply_rope(q, *ctx["cos_sin"]), L.apply_rope(k, *ctx["cos_sin"])
    if layer_cache is not None:
        k, v, layer_cache = L.cache_write(layer_cache, k, v, ctx["index"])
    out = L.dot_product_attention(q, k, v, ctx["mask"]).reshape(B, T, N * H)
    out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
    return L.linear(out, p["o_proj"], dropout_key=keys("o_proj")), layer_cache


MIXERS = {LINEAR: gated_deltanet, FULL: gated_attention}


# ----------------------------------------------------------------------------- forward


def init_cache(cfg: Config, batch: int, max_len: int, dtype=jnp.float32) -> dict:
    """Empty decoding state: KV slots (attention layers), conv history + fp32 state (DeltaNet layers).

    Start every new batch from a fresh cache: unlike stale KV slots, a stale DeltaNet state would be
    carried into a new prompt whose segment id equals the old one.
    """
    La, Ld = len(layer_ids(cfg, FULL)), len(layer_ids(cfg, LINEAR))
    kv = (La, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    W = cfg.linear_conv_kernel_dim
    state = (Ld, batch, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim)
    return {
        "k": jnp.zeros(kv, dtype),
        "v": jnp.zeros(kv, dtype),
        "conv": jnp.zeros((Ld, batch, W - 1, _dims(cfg)["conv"]), dtype),
        "state": jnp.zeros(state, jnp.float32),
        "conv_segments": jnp.zeros((batch, W - 1), jnp.int32),  # segment ids of the conv history
        "positions": jnp.zeros((batch, max_len), jnp.int32),
        "segments": jnp.zeros((batch, max_len), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def _take(tree, start: int, n: int):
    """Layers [start, start + n) of a stacked tree."""
    return jax.tree.map(lambda a: a[start : start + n], tree)


def hidden_states(params, cfg, tokens, positions, segment_ids, cache=None, *, lora_key=None, remat="none"):
    """tokens/positions/segment_ids [B, T] -> final-normed hidden [B, T, D] (and the updated cache)."""
    if cfg.linear_conv_kernel_dim < 2:
        raise ValueError("linear_conv_kernel_dim must be at least 2")
    layers = functools.partial(_scheduled_layers, params, cfg, lora_key=lora_key, remat=remat)
    return decoder.hidden_states(params, cfg, tokens, positions, segment_ids, cache, layers, zero_centered=True)


def _scheduled_layers(params, cfg, x, ctx, cache, *, lora_key, remat) -> tuple[Array, dict | None]:
    """All layers in `schedule` order: a scan over periods, in each an inner scan per run of same-kind
    layers. Returns the cache entries it updates (k/v, conv/state and the conv history's segments)."""
    B, T = ctx["segments"].shape
    W = cfg.linear_conv_kernel_dim
    history_segments = jnp.zeros((B, W - 1), jnp.int32) if cache is None else cache["conv_segments"]
    ctx = {**ctx, "runs": gdn.segment_runs(history_segments, ctx["segments"])}  # [B, W-1+T]

    runs, repeats = schedule(cfg)
    per_period = {kind: sum(n for k, n in runs if k == kind) for kind in (LINEAR, FULL)}
    groups = {LINEAR: "delta_layers", FULL: "attn_layers"}
    fold = lambda tree, n: jax.tree.map(lambda a: a.reshape(repeats, n, *a.shape[1:]), tree)  # noqa: E731
    stacked = {kind: fold(params[groups[kind]], per_period[kind]) for kind in groups if per_period[kind]}
    caches = None
    if cache is not None:
        caches = {
            LINEAR: fold({"conv": cache["conv"], "state": cache["state"]}, per_period[LINEAR]),
            FULL: fold({"k": cache["k"], "v": cache["v"]}, per_period[FULL]),
        }
        caches = {kind: c for kind, c in caches.items() if per_period[kind]}
    ids = {kind: np.asarray(layer_ids(cfg, kind)).reshape(repeats, -1) for kind in stacked}

    def period(x, scanned):
        """One period of the schedule: an inner scan over each run of same-kind layers."""
        p, c, layer_id = scanned
        start = dict.fromkeys(stacked, 0)
        new_caches = {kind: [] for kind in stacked}
        for kind, n in runs:
            i = start[kind]
            run_caches = None if c is None else _take(c[kind], i, n)
            x, new = decoder.scan_layers(
                MIXERS[kind], L.swiglu_mlp, x, cfg, ctx, _take(p[kind], i, n), run_caches, layer_id[kind][i : i + n],
                lora_key=lora_key, remat=remat, zero_centered=True,
            )  # fmt: skip
            new_caches[kind].append(new)
            start[kind] += n
        if c is None:
            return x, None
        return x, {kind: jax.tree.map(lambda *a: jnp.concatenate(a), *parts) for kind, parts in new_caches.items()}

    x, new_caches = jax.lax.scan(period, x, (stacked, caches, {k: jnp.asarray(v) for k, v in ids.items()}))
    if cache is None:
        return x, None
    unfold = lambda tree: jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), tree)  # noqa: E731
    new_caches = {kind: unfold(c) for kind, c in new_caches.items()}
    conv_segments = jnp.concatenate([history_segments, ctx["segments"]], axis=1)[:, T:]
    return x, {**new_caches.get(LINEAR, {}), **new_caches.get(FULL, {}), "conv_segments": conv_segments}


unembed = L.unembed


def forward(params, cfg, tokens, positions, segment_ids, cache=None, **kwargs) -> tuple[Array, dict | None]:
    hidden, cache = hidden_states(params, cfg, tokens, positions, segment_ids, cache, **kwargs)
    return unembed(params, cfg, hidden), cache


# ----------------------------------------------------------------------------- weight map


@dataclasses.dataclass(frozen=True)
class StackedTensor(HFTensor):
    """An HFTensor whose stacked index j is HF layer `layer_ids[j]` (layers of one kind only)."""

    layer_ids: tuple[int, ...] = ()

    def hf_key(self, layer: int | None) -> str:
        return self.key.format(i=self.layer_ids[layer])

    def consumed_keys(self, layer: int | None) -> tuple[str, ...]:
        return tuple(k.format(i=self.layer_ids[layer]) for k in (self.source_keys or (self.key,)))


def _conv_tensor(key: str, ids: tuple[int, ...], width: int, channels: int) -> StackedTensor:
    """HF conv1d.weight [C, 1, W] <-> our [W, C]."""

    def read(reader: CheckpointReader, layer: int) -> np.ndarray:
        name = key.format(i=ids[layer])
        shape = reader.shape(name)
        if shape != (channels, 1, width):
            want = [channels, 1, width]
            raise CheckpointError(f"{reader.folder}: tensor {name!r} has shape {list(shape)}, expected {want}")
        return reader.read(name)[:, 0, :].T

    def write(arr: np.ndarray, layer: int) -> dict[str, np.ndarray]:
        return {key.format(i=ids[layer]): np.ascontiguousarray(arr.T[:, None, :])}

    return StackedTensor(key, layered=True, read=read, write=write, layer_ids=ids)


def weight_map(cfg: Config) -> dict[tuple[str, ...], HFTensor]:
    """Our parameter path -> HF tensor, for the layout of `cfg.architecture`."""
    prefix = "model.language_model." if cfg.architecture == "Qwen3_5ForConditionalGeneration" else "model."
    layer = prefix + "layers.{i}."
    common = {  # our name -> (HF name, transposed: HF stores a projection [out, in])
        "input_norm": ("input_layernorm.weight", False),
        "post_norm": ("post_attention_layernorm.weight", False),
        **{f"{p}_proj": (f"mlp.{p}_proj.weight", True) for p in ("gate", "up", "down")},
    }
    delta_projections = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")
    tables = {
        ("delta_layers", LINEAR): common
        | {n: (f"linear_attn.{n}.weight", True) for n in delta_projections}
        | {n: (f"linear_attn.{n}", False) for n in ("dt_bias", "A_log")}
        | {"norm": ("linear_attn.norm.weight", False)},
        ("attn_layers", FULL): common
        | {f"{p}_proj": (f"self_attn.{p}_proj.weight", True) for p in "qkvo"}
        | {f"{p}_norm": (f"self_attn.{p}_norm.weight", False) for p in "qk"},
    }
    specs = param_specs(cfg)
    out = hf_io.stack_tensors(specs, prefix)
    for (group, kind), table in tables.items():
        ids = layer_ids(cfg, kind)
        for name, spec in specs[group].items():
            if name == "conv1d":  # HF [C, 1, W], a layout of its own
                out[(group, name)] = _conv_tensor(layer + "linear_attn.conv1d.weight", ids, *spec.shape[1:])
            else:
                key, transpose = table[name]
                out[(group, name)] = StackedTensor(layer + key, transpose, layered=True, layer_ids=ids)
    return out
