"""gpt-oss: a decoder with attention sinks, alternating sliding/full attention and a top-k MoE MLP.

Per layer (HF `GptOssDecoderLayer`): RMSNorm -> attention (q/k/v/o biases, YaRN RoPE, one learned sink
logit per head in the softmax normaliser, a sliding window on the layers `layer_types` marks
"sliding_attention") -> residual -> RMSNorm -> MoE (moe.py) -> residual.

The layers run in the shared decoder stack (decoder.py); the sliding/full choice is a scanned per-layer
flag that selects between two masks built once per call. The KV cache keeps one slot per position for
every layer (llama's layout); the window is enforced by the mask on cached positions, so prefill of
left-padded prompts and one-token decode run through the same code.

LoRA (training/lora.py) adapts q/k/v/o and both expert projections by default: per-expert pairs
a [L, E, in, r], b [L, E, r, out] that run through the same grouped matmuls as the experts (moe.py); the
router stays frozen unless lora.targets names it. PEFT exports the experts and the router as
`target_parameters` (`PEFT_PARAMETERS`).

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

from jax_distill.models import decoder, hf_io, mxfp4
from jax_distill.models import layers as L
from jax_distill.models.hf_io import CheckpointError, HFTensor
from jax_distill.models.llama import init_cache  # noqa: F401  (same cache layout)
from jax_distill.models.moe import moe_mlp
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
        widths = decoder.widths_from_hf(hf)
        layer_types = hf.get("layer_types") or [SLIDING if (i + 1) % 2 else FULL for i in range(layers)]
        quant = hf.get("quantization_config") or {}
        if quant and quant.get("quant_method") != "mxfp4":
            raise CheckpointError(f"unsupported quantization_config.quant_method {quant.get('quant_method')!r}")
        hf_rope = dict(hf)  # GptOssConfig's defaults where the file is silent
        if not hf.get("rope_parameters") and not hf.get("rope_scaling"):
            hf_rope["rope_parameters"] = dict(DEFAULT_YARN)
        hf_rope.setdefault("rope_theta", (hf_rope.get("rope_parameters") or {}).get("rope_theta", 150000.0))
        fields = dict(
            **widths,
            num_layers=layers,
            num_experts=hf["num_local_experts"],
            num_experts_per_token=hf.get("num_experts_per_tok") or hf.get("experts_per_token", 4),
            layer_types=tuple(layer_types),
            sliding_window=hf.get("sliding_window") or 128,
            rope=L.Rope.from_hf(hf_rope, widths["head_dim"]),
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
            **decoder.hf_fields(self),
            num_local_experts=self.num_experts,
            num_experts_per_tok=self.num_experts_per_token,
            experts_per_token=self.num_experts_per_token,
            layer_types=list(self.layer_types),
            sliding_window=self.sliding_window,
            swiglu_alpha=self.swiglu_alpha,
            swiglu_limit=self.swiglu_limit,
            attention_bias=True,
            rope_parameters={"rope_theta": self.rope.theta, "rope_type": "default", **dict(self.rope.scaling)},
            pad_token_id=self.pad_token_id,
        )


# ----------------------------------------------------------------------------- parameters


def param_specs(cfg: Config) -> dict:
    D, F, E = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts
    layer = {
        "input_norm": ParamSpec((D,), ("norm",), "ones"),
        **decoder.attention_specs(cfg, bias=True),
        "sinks": ParamSpec((cfg.num_heads,), ("heads",)),
        "post_norm": ParamSpec((D,), ("norm",), "ones"),
        # router logits stay whole for top-k; the router is frozen under LoRA unless lora.targets names it
        "router": ParamSpec((D, E), ("embed", None)),
        "router_bias": ParamSpec((E,), (None,), "zeros"),
        # every expert's projections are LoRA targets by default: one low-rank pair per expert, stacked
        "gate_up_proj": ParamSpec((E, D, 2 * F), ("experts", "embed", "mlp"), lora_role="experts"),  # gate/up interleaved
        "gate_up_bias": ParamSpec((E, 2 * F), ("experts", "mlp"), "zeros"),
        "down_proj": ParamSpec((E, F, D), ("experts", "mlp", "embed"), lora_role="experts"),
        "down_bias": ParamSpec((E, D), ("experts", "embed"), "zeros"),
    }
    return decoder.stack_specs(cfg, {"layers": (layer, cfg.num_layers)})


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


# Adapted by PEFT as parameters: the stacked experts (GptOssExperts.gate_up_proj / down_proj) and the router
# (GptOssTopKRouter holds a bare weight, no nn.Linear)
PEFT_PARAMETERS = ("router", "gate_up_proj", "down_proj")


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
    out = hf_io.stack_tensors(specs)
    for name, spec in specs["layers"].items():
        key, transpose = table[name]
        key = prefix + key
        peft_parameter = name in PEFT_PARAMETERS
        if cfg.mxfp4 and name in ("gate_up_proj", "down_proj"):
            out[("layers", name)] = HFTensor(
                key,
                layered=True,
                read=_mxfp4_reader(key, spec.shape[1:]),
                read_sliced=True,
                source_keys=(key + "_blocks", key + "_scales"),
                peft_parameter=peft_parameter,
            )
        else:
            out[("layers", name)] = HFTensor(key, transpose=transpose, layered=True, peft_parameter=peft_parameter)
    return out


# ----------------------------------------------------------------------------- forward


def attention_block(x: Array, p: dict, cfg: Config, ctx: dict, layer_cache, keys):
    """Sink attention on x [B, T, D] under this layer's mask (sliding window or full)."""
    mask = jnp.where(ctx["is_sliding"], ctx["sliding_mask"], ctx["mask"])
    return decoder.self_attention(x, p, cfg, {**ctx, "mask": mask}, layer_cache, keys)


def hidden_states(params, cfg, tokens, positions, segment_ids, cache=None, *, lora_key=None, remat="none"):
    """tokens/positions/segment_ids [B, T] -> final-normed hidden [B, T, D] (and the updated cache)."""

    def experts(h: Array, p: dict, keys) -> Array:
        return moe_mlp(h, p, cfg.num_experts_per_token, cfg.swiglu_alpha, cfg.swiglu_limit, keys=keys)

    sliding = {"is_sliding": jnp.asarray(np.array([t == SLIDING for t in cfg.layer_types]))}  # [L]
    layers = decoder.uniform_layers(
        attention_block, experts, params, cfg, lora_key=lora_key, remat=remat, per_layer=sliding
    )
    return decoder.hidden_states(
        params, cfg, tokens, positions, segment_ids, cache, layers, sliding_window=cfg.sliding_window
    )


unembed = L.unembed


def forward(params, cfg, tokens, positions, segment_ids, cache=None, **kwargs) -> tuple[Array, dict | None]:
    hidden, cache = hidden_states(params, cfg, tokens, positions, segment_ids, cache, **kwargs)
    return unembed(params, cfg, hidden), cache
