"""gpt-oss: a decoder with attention sinks, alternating sliding/full attention and a top-k MoE MLP.

Per layer (HF `GptOssDecoderLayer`): RMSNorm -> attention (q/k/v/o biases, YaRN RoPE, one learned sink
logit per head in the softmax normaliser, a sliding window on the layers `layer_types` marks
"sliding_attention") -> residual -> RMSNorm -> MoE (moe.py) -> residual.

Layers are stacked and run under `lax.scan`; the sliding/full choice is a scanned per-layer flag that
selects between two masks built once per call. The KV cache keeps one slot per position for every
layer (llama's convention: `index` is where the T new tokens go); the window is enforced by the mask on
cached positions, so prefill of left-padded prompts and one-token decode run through the same code.

Released checkpoints store expert weights as MXFP4 blocks + scales (mxfp4.py): `Config.mxfp4` is read
from `quantization_config`, and the weight map then dequantizes on load. Export always writes plain
(dequantized) expert weights and a config without `quantization_config`.

Shapes: B batch, T query length, S cache slots, D model width, N query heads, K kv heads, H head dim,
E experts, F expert width, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_distill.models import layers as L
from jax_distill.models import mxfp4
from jax_distill.models.hf_io import CheckpointError, HFTensor
from jax_distill.models.llama import init_cache  # noqa: F401  (same cache layout)
from jax_distill.models.moe import moe_mlp
from jax_distill.parallel.sharding import constrain
from jax_distill.params import ParamSpec

Array = jax.Array
SLIDING, FULL = "sliding_attention", "full_attention"
DEFAULT_YARN = {  # GptOssConfig's rope_parameters when config.json gives none
    "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
    "original_max_position_embeddings": 4096,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # width F of each expert
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_token: int
    layer_types: tuple[str, ...]  # "sliding_attention" | "full_attention" per layer
    sliding_window: int
    rope: L.Rope
    rms_norm_eps: float = 1e-5
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: Any = None
    pad_token_id: int | None = None
    max_position_embeddings: int = 131072
    mxfp4: bool = False  # checkpoint stores experts as MXFP4 blocks/scales (dequantized on load)
    architecture: str = "GptOssForCausalLM"
    model_type: str = "gpt_oss"
    dtype: str = "float32"  # compute dtype

    def __post_init__(self):
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        bad = sorted(set(self.layer_types) - {SLIDING, FULL})
        if bad:
            raise ValueError(f"unsupported layer_types {bad}; gpt-oss has {SLIDING!r} and {FULL!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "Config":
        layers = hf["num_hidden_layers"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        layer_types = hf.get("layer_types") or [SLIDING if (i + 1) % 2 else FULL for i in range(layers)]
        quant = hf.get("quantization_config") or {}
        if quant and quant.get("quant_method") != "mxfp4":
            raise CheckpointError(f"unsupported quantization_config.quant_method {quant.get('quant_method')!r}")
        hf_rope = dict(hf)  # GptOssConfig's defaults where the file is silent
        if not hf.get("rope_parameters") and not hf.get("rope_scaling"):
            hf_rope["rope_parameters"] = dict(DEFAULT_YARN)
        hf_rope.setdefault("rope_theta", (hf_rope.get("rope_parameters") or {}).get("rope_theta", 150000.0))
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=layers,
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=head_dim,
            num_experts=hf["num_local_experts"],
            num_experts_per_token=hf.get("num_experts_per_tok") or hf.get("experts_per_token", 4),
            layer_types=tuple(layer_types),
            sliding_window=hf.get("sliding_window") or 128,
            rope=L.Rope.from_hf(hf_rope, head_dim),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            swiglu_alpha=hf.get("swiglu_alpha", 1.702),
            swiglu_limit=hf.get("swiglu_limit", 7.0),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            max_position_embeddings=hf.get("max_position_embeddings", 131072),
            mxfp4=bool(quant),
            architecture=(hf.get("architectures") or [cls.architecture])[0],
            model_type=hf.get("model_type", cls.model_type),
        )
        if hf.get("attention_bias") is False:
            raise CheckpointError("gpt-oss without attention biases (attention_bias=false) is not supported")
        return cls(**{**fields, **overrides})

    def to_hf(self) -> dict:
        """A GptOssConfig dict for plain (dequantized) weights: no quantization_config."""
        return dict(
            architectures=[self.architecture],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            num_local_experts=self.num_experts,
            num_experts_per_tok=self.num_experts_per_token,
            experts_per_token=self.num_experts_per_token,
            layer_types=list(self.layer_types),
            sliding_window=self.sliding_window,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            swiglu_alpha=self.swiglu_alpha,
            swiglu_limit=self.swiglu_limit,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=True,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_theta": self.rope.theta, "rope_type": "default", **dict(self.rope.scaling)},
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )


# ----------------------------------------------------------------------------- parameters


def param_specs(cfg: Config) -> dict:
    D, F, H, E, N = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_experts, cfg.num_heads
    NH, KH = N * H, cfg.num_kv_heads * H
    layer = {
        "input_norm": ParamSpec((D,), ("norm",), "ones"),
        "q_proj": ParamSpec((D, NH), ("embed", "heads")),
        "q_bias": ParamSpec((NH,), ("heads",), "zeros"),
        "k_proj": ParamSpec((D, KH), ("embed", "kv_heads")),
        "k_bias": ParamSpec((KH,), ("kv_heads",), "zeros"),
        "v_proj": ParamSpec((D, KH), ("embed", "kv_heads")),
        "v_bias": ParamSpec((KH,), ("kv_heads",), "zeros"),
        "o_proj": ParamSpec((NH, D), ("heads", "embed")),
        "o_bias": ParamSpec((D,), ("embed",), "zeros"),
        "sinks": ParamSpec((N,), ("heads",)),
        "post_norm": ParamSpec((D,), ("norm",), "ones"),
        "router": ParamSpec((D, E), ("embed", None)),  # router logits stay whole for top-k
        "router_bias": ParamSpec((E,), (None,), "zeros"),
        "gate_up_proj": ParamSpec((E, D, 2 * F), ("experts", "embed", "mlp")),  # gate/up interleaved
        "gate_up_bias": ParamSpec((E, 2 * F), ("experts", "mlp"), "zeros"),
        "down_proj": ParamSpec((E, F, D), ("experts", "mlp", "embed")),
        "down_bias": ParamSpec((E, D), ("experts", "embed"), "zeros"),
    }
    specs = {
        "embed": ParamSpec((cfg.vocab_size, D), ("vocab", "embed")),
        "layers": {name: L.stacked(s, cfg.num_layers) for name, s in layer.items()},
        "final_norm": ParamSpec((D,), ("norm",), "ones"),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((D, cfg.vocab_size), ("embed", "vocab"))
    return specs


def _mxfp4_reader(key: str, shape: tuple[int, ...]):
    """Sliced read hook: block `index` of one layer's weight [E, in, out], dequantized from
    `<key>_blocks` / `<key>_scales`. Only the scale groups covering the block are read, so each device
    dequantizes its own shard (a released 20B layer is ~2 GB once dequantized to fp32)."""

    def read(reader, layer, index=()):
        name = key.format(i=layer)
        E, n_in, n_out = shape
        want = (E, n_out, n_in // mxfp4.BLOCK, mxfp4.BLOCK // 2)
        got_blocks, got_scales = reader.shape(name + "_blocks"), reader.shape(name + "_scales")
        if got_blocks != want or got_scales != want[:-1]:
            raise CheckpointError(
                f"{reader.folder}: MXFP4 tensors {name}_blocks {list(got_blocks)} / {name}_scales "
                f"{list(got_scales)}, expected {list(want)} / {list(want[:-1])}"
            )
        e, i, o = (slice(*s.indices(n)) for s, n in zip(tuple(index) + (slice(None),) * 3, shape))
        g0, g1 = i.start // mxfp4.BLOCK, -(-i.stop // mxfp4.BLOCK)  # scale groups covering the inputs
        groups = (e, o, slice(g0, g1))
        try:
            w = mxfp4.dequantize(reader.read(name + "_blocks", groups), reader.read(name + "_scales", groups))
        except ValueError as err:
            raise CheckpointError(f"{reader.folder}: {name}: {err}") from None
        return w[:, i.start - g0 * mxfp4.BLOCK : i.stop - g0 * mxfp4.BLOCK]  # [e, i, o]

    return read


def weight_map(cfg: Config) -> dict[tuple[str, ...], HFTensor]:
    """Our parameter path -> HF tensor; `{i}` is the layer index of stacked parameters."""
    prefix = "model.layers.{i}."
    table = {
        "input_norm": ("input_layernorm.weight", False),
        "post_norm": ("post_attention_layernorm.weight", False),
        **{f"{p}_proj": (f"self_attn.{p}_proj.weight", True) for p in "qkvo"},
        **{f"{p}_bias": (f"self_attn.{p}_proj.bias", False) for p in "qkvo"},
        "sinks": ("self_attn.sinks", False),
        "router": ("mlp.router.weight", True),
        "router_bias": ("mlp.router.bias", False),
        "gate_up_proj": ("mlp.experts.gate_up_proj", False),  # HF keeps [E, D, 2F] as we do
        "gate_up_bias": ("mlp.experts.gate_up_proj_bias", False),
        "down_proj": ("mlp.experts.down_proj", False),
        "down_bias": ("mlp.experts.down_proj_bias", False),
    }
    specs = param_specs(cfg)
    out = {
        ("embed",): HFTensor("model.embed_tokens.weight"),
        ("final_norm",): HFTensor("model.norm.weight"),
    }
    if "lm_head" in specs:
        out[("lm_head",)] = HFTensor("lm_head.weight", transpose=True)
    for name, spec in specs["layers"].items():
        key, transpose = table[name]
        key = prefix + key
        if cfg.mxfp4 and name in ("gate_up_proj", "down_proj"):
            out[("layers", name)] = HFTensor(
                key,
                layered=True,
                read=_mxfp4_reader(key, spec.shape[1:]),
                read_sliced=True,
                source_keys=(key + "_blocks", key + "_scales"),
            )
        else:
            out[("layers", name)] = HFTensor(key, transpose=transpose, layered=True)
    return out


# ----------------------------------------------------------------------------- forward


def attention_block(x: Array, p: dict, cfg: Config, cos_sin, mask: Array, layer_cache, cache_index, keys):
    """Sink attention on x [B, T, D]; with a cache, new k/v are written at cache_index first."""
    B, T, _ = x.shape
    q = L.linear(x, p["q_proj"], p["q_bias"], keys("q_proj")).reshape(B, T, cfg.num_heads, cfg.head_dim)
    k = L.linear(x, p["k_proj"], p["k_bias"], keys("k_proj")).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
    v = L.linear(x, p["v_proj"], p["v_bias"], keys("v_proj")).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
    q, k = L.apply_rope(q, *cos_sin), L.apply_rope(k, *cos_sin)
    if layer_cache is not None:
        k, v, layer_cache = L.cache_write(layer_cache, k, v, cache_index)
    out = L.dot_product_attention(q, k, v, mask, sinks=p["sinks"])  # [B, T, N, H]
    out = L.linear(out.reshape(B, T, -1), p["o_proj"], p["o_bias"], keys("o_proj"))
    return out, layer_cache


def hidden_states(
    params: dict,
    cfg: Config,
    tokens: Array,
    positions: Array,
    segment_ids: Array,
    cache: dict | None = None,
    *,
    lora_key: Array | None = None,
    remat: str = "none",
) -> tuple[Array, dict | None]:
    """tokens/positions/segment_ids [B, T] -> final-normed hidden [B, T, D] (and the updated cache)."""
    dtype = jnp.dtype(cfg.dtype)
    x = params["embed"].astype(dtype)[tokens]  # [B, T, D]
    x = constrain(x, ("batch", "seq", "embed"))
    cos_sin = cfg.rope.cos_sin(positions)
    index, k_positions, k_segments = L.key_slots(cache, positions, segment_ids)
    full_mask = L.attention_mask(positions, segment_ids, k_positions, k_segments)  # [B, T, S]
    sliding_mask = L.attention_mask(positions, segment_ids, k_positions, k_segments, cfg.sliding_window)
    sliding = jnp.asarray(np.array([t == SLIDING for t in cfg.layer_types]))  # [L]

    def block(x, scanned):
        p, layer_cache, layer_id, is_sliding = scanned
        keys = L.projection_keys(lora_key, layer_id)
        mask = jnp.where(is_sliding, sliding_mask, full_mask)
        h = L.rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
        attn, layer_cache = attention_block(h, p, cfg, cos_sin, mask, layer_cache, index, keys)
        x = x + attn
        h = L.rms_norm(x, p["post_norm"], cfg.rms_norm_eps)
        x = x + moe_mlp(h, p, cfg.num_experts_per_token, cfg.swiglu_alpha, cfg.swiglu_limit)
        return constrain(x, ("batch", "seq", "embed")), layer_cache

    layer_caches = None if cache is None else {"k": cache["k"], "v": cache["v"]}
    scanned = (params["layers"], layer_caches, jnp.arange(cfg.num_layers), sliding)
    x, layer_caches = jax.lax.scan(L.remat(block, remat), x, scanned)
    x = L.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    if cache is not None:
        cache = {**layer_caches, "positions": k_positions, "segments": k_segments, "index": index + tokens.shape[1]}
    return x, cache


unembed = L.unembed


def forward(params, cfg, tokens, positions, segment_ids, cache=None, **kwargs) -> tuple[Array, dict | None]:
    hidden, cache = hidden_states(params, cfg, tokens, positions, segment_ids, cache, **kwargs)
    return unembed(params, cfg, hidden), cache
