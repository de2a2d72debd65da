"""Batched autoregressive sampling for any student family: jitted prefill + jitted decode loop.

Shapes are static per (batch bucket, prompt bucket, new-token bucket), so a long evaluation compiles a
handful of programs and then only runs them. One call:
  1. prompts are left-padded to the prompt bucket (batching.left_pad, shared with the scorer), so every
     prompt's last token sits in the same column;
  2. `_prefill` builds the family's cache (`module.init_cache`), runs the prompt through it and samples
     the first new token from the last column;
  3. `_decode` runs a `lax.while_loop` of one-token steps (the cache is donated and updated in place)
     until every row is done or `chunk_end` is reached.
Stopping: end-of-turn ids (the token that closes an assistant turn in the student's chat format, given by
the engine), end-of-sequence ids and stop strings that are exactly one token stop a row inside the loop,
token by token. Other stop strings are checked on the decoded text between chunks of `chunk_size` steps:
a row whose text contains one is cut at the stop string (the token ids keep the shortest prefix whose
text contains it, as vLLM counts them) and marked done; rows keep running until all are done.
Nothing is kept between calls (the jit caches aside), so one Sampler serves any number of requests.
Each row records why it stopped (`stop_reason`, one of engines.base.STOP_REASONS): end_of_turn, eos,
stop (a stop string or a requested stop id) or max_tokens.

Settings are the one SamplingParams type of every engine (one completion per prompt: `n` is the
engine's concern). Sampling follows Hugging Face/vLLM order: temperature, then top-k, then top-p on the renormalised
top-k distribution; temperature 0 is greedy argmax. Each row draws from its own key
fold_in(fold_in(key(seed), sample_id), step), so a sample does not depend on what it was batched with.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_distill.batching import Static, batch_rows, bucket, left_pad, put_batch
from jax_distill.models import Model
from jax_distill.models.hf_io import host_array  # batch-sharded outputs may span several hosts
from jax_distill.parallel.sharding import ShardingRules, use_rules
from jax_distill.sampling_params import SamplingParams

Array = jax.Array
MAX_STOP_IDS = 8  # stop-token slots compiled into the loop (padded with -1)


@dataclasses.dataclass
class SampleOutput:
    """Per prompt: generated ids (a final stop id included, as vLLM reports them), text (stop token and
    stop string excluded), number of generated tokens, finish reason ("stop" or "length", vLLM's) and
    stop reason (end_of_turn | eos | stop | max_tokens)."""

    token_ids: list[list[int]]
    texts: list[str]
    lengths: list[int]
    finish_reasons: list[str]
    stop_reasons: list[str]
    prompt_lengths: list[int]
    logits: np.ndarray | None = None  # [B, M, V] per-step logits when record_logits (tests, debugging)


# ----------------------------------------------------------------------------- token choice


def filter_logits(logits: Array, top_k: Array | int, top_p: Array | float) -> Array:
    """Logits [B, V] with everything outside top-k and then the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability (renormalised over the
    top-k survivors) reaches top_p; the most likely token is always kept.
    """
    V = logits.shape[-1]
    order = jnp.argsort(-logits, axis=-1)  # [B, V], most likely first
    ranked = jnp.take_along_axis(logits, order, axis=-1)
    rank = jnp.arange(V)[None, :]
    keep = (top_k <= 0) | (rank < top_k)
    ranked = jnp.where(keep, ranked, -jnp.inf)
    probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep &= (mass_before < top_p) | (rank == 0)
    ranked = jnp.where(keep, ranked, -jnp.inf)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(ranked, inverse, axis=-1)


def sample_logits(logits: Array, keys: Array, temperature, top_k, top_p, mode: str = "filter") -> Array:
    """One token per row from fp32 logits [B, V]; keys [B] (one per row). mode (static): greedy (argmax),
    sample (temperature only: no vocabulary sort per step), filter (temperature + top-k/top-p)."""
    if mode == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if mode == "filter":
        scaled = filter_logits(scaled, top_k, top_p)
    elif mode != "sample":
        raise ValueError(f"sampling mode must be greedy|sample|filter, got {mode!r}")
    return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)


def stop_reason(last: int | None, stopped: bool, stop_string: bool, end_of_turn_ids, eos_ids) -> str:
    """Why a row ended (end_of_turn | eos | stop | max_tokens): a stop string; no stop token before
    max_tokens; else the stop token it ended on, end of turn first (when a template ends its turns with
    EOS, that EOS ended the turn)."""
    if stop_string:
        return "stop"
    if not stopped:
        return "max_tokens"
    if last in end_of_turn_ids:
        return "end_of_turn"
    return "eos" if last in eos_ids else "stop"


def sampling_mode(params: SamplingParams) -> str:
    if params.temperature == 0.0:
        return "greedy"
    return "filter" if params.top_k > 0 or params.top_p < 1.0 else "sample"


# ----------------------------------------------------------------------------- jitted programs


def _constrain_state(tree: Any, batch: int, rules: ShardingRules | None) -> Any:
    """Split decoding state over the batch axes. Family caches stack layers first, so a leaf of rank
    >= 3 has batch on axis 1 and a rank-2 leaf ([B, S] positions, [B, M] buffers) on axis 0; leaves
    where that axis is not the batch are left to the compiler."""
    if rules is None:
        return tree

    def one(x):
        axis = 1 if x.ndim >= 3 else 0
        if x.ndim == 0 or x.shape[axis] != batch:
            return x
        axes = [None] * x.ndim
        axes[axis] = "batch"
        return jax.lax.with_sharding_constraint(x, rules.sharding(axes, x.shape))

    return jax.tree.map(one, tree)


def _row_keys(seed: Array, sample_ids: Array, step: Array) -> Array:
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), step))(sample_ids)


def _record(state: dict, logits: Array, knobs: dict, mode: str, record_logits: bool) -> dict:
    """Choose the token at `state["step"]` from logits [B, V] and update lengths / done flags."""
    step = state["step"]
    keys = _row_keys(knobs["seed"], knobs["sample_ids"], step)
    token = sample_logits(logits, keys, knobs["temperature"], knobs["top_k"], knobs["top_p"], mode)
    active = ~state["done"]
    token = jnp.where(active, token, 0)
    tokens = jax.lax.dynamic_update_slice(state["tokens"], token[:, None], (0, step))
    stopped = jnp.any(token[:, None] == knobs["stop_ids"][None, :], axis=-1)
    new = {
        **state,
        "tokens": tokens,
        "last": token,
        "lengths": jnp.where(active, step + 1, state["lengths"]),
        "stopped": state["stopped"] | (active & stopped),
        "done": state["done"] | stopped | (step + 1 >= knobs["max_new"]),
        "step": step + 1,
    }
    if record_logits:
        new["logits"] = jax.lax.dynamic_update_slice(state["logits"], logits[:, None, :], (0, step, 0))
    return new


@functools.partial(
    jax.jit, static_argnames=("module", "cfg", "cache_len", "cache_dtype", "max_new", "mode", "record_logits", "rules")
)
def _prefill(
    params,
    tokens,
    positions,
    segments,
    knobs,
    *,
    module,
    cfg,
    cache_len,
    cache_dtype,
    max_new,
    mode,
    record_logits,
    rules,
):
    """Prompt [B, P] -> decoding state with the first new token chosen."""
    cfg, rules = cfg.value, rules.value
    B = tokens.shape[0]
    with use_rules(rules):
        cache = _constrain_state(module.init_cache(cfg, B, cache_len, jnp.dtype(cache_dtype)), B, rules)
        hidden, cache = module.hidden_states(params, cfg, tokens, positions, segments, cache)
        logits = module.unembed(params, cfg, hidden[:, -1:])[:, 0]  # [B, V] at each prompt's last token
        state = {
            "cache": cache,
            "tokens": jnp.zeros((B, max_new), jnp.int32),
            "last": jnp.zeros((B,), jnp.int32),
            "next_pos": positions[:, -1] + 1,
            "lengths": jnp.zeros((B,), jnp.int32),
            "stopped": jnp.zeros((B,), bool),
            "done": jnp.zeros((B,), bool),
            "step": jnp.zeros((), jnp.int32),
        }
        if record_logits:
            state["logits"] = jnp.zeros((B, max_new, logits.shape[-1]), jnp.float32)
        state = _record(state, logits, knobs, mode, record_logits)
        return _constrain_state(state, B, rules)


@functools.partial(
    jax.jit, static_argnames=("module", "cfg", "mode", "record_logits", "rules"), donate_argnames=("state",)
)
def _decode(params, state, knobs, chunk_end, *, module, cfg, mode, record_logits, rules):
    """One-token steps until every row is done or `step` reaches chunk_end."""
    cfg, rules = cfg.value, rules.value
    B = state["last"].shape[0]

    def cond(s):
        return (s["step"] < chunk_end) & ~jnp.all(s["done"])

    def body(s):
        tok = s["last"][:, None]
        pos = s["next_pos"][:, None]
        logits, cache = module.forward(params, cfg, tok, pos, jnp.ones_like(tok), s["cache"])
        s = {**s, "cache": cache, "next_pos": s["next_pos"] + 1}
        return _constrain_state(_record(s, logits[:, 0], knobs, mode, record_logits), B, rules)

    with use_rules(rules):
        return jax.lax.while_loop(cond, body, state)


# ----------------------------------------------------------------------------- the sampler


class Sampler:
    """Generates from a Model; holds only the model, tokenizer and static settings.

    rules: ShardingRules whose mesh the (already placed) parameters live on; prompts are split over the
    batch axes (data, fsdp). chunk_size: decode steps between stop-string checks. end_of_turn_ids: the
    token(s) that close an assistant turn in the chat format (ChatFormat.turn_end_ids); they stop a row
    beside EOS unless a request names its own stop_token_ids.
    """

    def __init__(
        self,
        model: Model,
        tokenizer,
        rules: ShardingRules | None = None,
        chunk_size: int = 64,
        min_prompt_bucket: int = 16,
        min_new_bucket: int = 16,
        cache_dtype: Any = None,
        end_of_turn_ids: Sequence[int] = (),
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.rules = rules
        self.chunk_size = chunk_size
        self.min_prompt_bucket = min_prompt_bucket
        self.min_new_bucket = min_new_bucket
        self.cache_dtype = jnp.dtype(cache_dtype or model.config.dtype).name
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = self._default_eos_ids()
        self.end_of_turn_ids = tuple(sorted(set(end_of_turn_ids)))

    def _default_eos_ids(self) -> tuple[int, ...]:
        ids = set()
        eos = getattr(self.model.config, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def _stop_ids(self, params: SamplingParams) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Token-level stop ids (end of turn + EOS, or the request's own, + single-token stop strings) and
        the stop strings left for text."""
        ids = list(self.end_of_turn_ids + self.eos_ids if params.stop_token_ids is None else params.stop_token_ids)
        text_stops = []
        for s in params.stop:
            enc = self.tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1 and self.tokenizer.decode(enc, skip_special_tokens=False) == s:
                ids.append(enc[0])
            else:
                text_stops.append(s)
        ids = sorted(set(ids))
        if len(ids) > MAX_STOP_IDS:
            raise ValueError(f"at most {MAX_STOP_IDS} stop token ids, got {ids}")
        return tuple(ids), tuple(text_stops)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        sample_ids: Sequence[int] | None = None,
        record_logits: bool = False,
    ) -> SampleOutput:
        """Sample one continuation of each prompt (token ids); `params.n` must be 1 (the engine repeats
        a prompt for more). `sample_ids` seed each row's stream (default: the row index), so the same id
        and seed give the same sample in any batch."""
        mode = sampling_mode(params)
        if params.n != 1:
            raise ValueError(f"the sampler draws one completion per prompt; got n={params.n} (repeat the prompt)")
        if params.seed is None and mode != "greedy":
            raise ValueError("sampling at temperature > 0 needs a seed (the engine draws one for unseeded requests)")
        if not prompts:
            return SampleOutput([], [], [], [], [], [])
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        n = len(prompts)
        B = batch_rows(n, self.rules)
        P = bucket(max(len(p) for p in prompts), self.min_prompt_bucket)
        M = bucket(params.max_tokens, self.min_new_bucket)
        rows = list(prompts) + [prompts[0]] * (B - n)  # filler rows repeat a real prompt; dropped below
        tokens, positions, segments = left_pad(rows, P, B, self.pad_id)
        ids = (
            np.arange(B, dtype=np.int32)
            if sample_ids is None
            else np.asarray(list(sample_ids) + [0] * (B - n), np.int32)
        )
        stop_ids, text_stops = self._stop_ids(params)
        knobs = {
            "seed": jnp.asarray((params.seed or 0) & 0xFFFFFFFF, jnp.uint32),  # greedy: unused
            "temperature": jnp.asarray(params.temperature, jnp.float32),
            "top_k": jnp.asarray(params.top_k, jnp.int32),
            "top_p": jnp.asarray(params.top_p, jnp.float32),
            "max_new": jnp.asarray(params.max_tokens, jnp.int32),
            "stop_ids": jnp.asarray(list(stop_ids) + [-1] * (MAX_STOP_IDS - len(stop_ids)), jnp.int32),
            "sample_ids": ids,
        }
        tokens, positions, segments = (put_batch(x, self.rules) for x in (tokens, positions, segments))
        knobs["sample_ids"] = put_batch(ids, self.rules)
        static = dict(
            module=self.model.module,
            cfg=Static(self.model.config),
            mode=mode,
            record_logits=record_logits,
            rules=Static(self.rules),
        )
        state = _prefill(
            self.model.params,
            tokens,
            positions,
            segments,
            knobs,
            cache_len=P + M,
            cache_dtype=self.cache_dtype,
            max_new=M,
            **static,
        )

        cut = [None] * B  # (length, text) for rows stopped by a stop string
        checked = [False] * B
        chunk = self.chunk_size if text_stops else params.max_tokens
        while True:
            done = host_array(state["done"])
            step = int(state["step"])
            if text_stops:
                if self._check_stop_strings(state, text_stops, cut, checked, n):
                    done = done | np.array([c is not None for c in cut])
                    state["done"] = jax.device_put(done, state["done"].sharding)
            if done[:n].all() or step >= params.max_tokens:
                break
            state = _decode(self.model.params, state, knobs, jnp.asarray(step + chunk, jnp.int32), **static)

        return self._outputs(state, cut, stop_ids, prompts, record_logits)

    def _check_stop_strings(self, state, stops, cut, checked, n) -> bool:
        """Cut rows whose text now holds a stop string; returns whether any row changed. A finished
        row is checked once more (its last chunk) and then left alone."""
        done = host_array(state["done"])
        stopped = host_array(state["stopped"])
        lengths = host_array(state["lengths"])
        tokens = host_array(state["tokens"])
        changed = False
        for i in range(n):
            if cut[i] is not None or checked[i]:
                continue
            checked[i] = bool(done[i])
            seq = tokens[i, : lengths[i]].tolist()
            if stopped[i]:
                seq = seq[:-1]  # the stop token itself is not text
            text = self.tokenizer.decode(seq, skip_special_tokens=False)
            hits = [(text.find(s), s) for s in stops if s in text]
            if not hits:
                continue
            at, _ = min(hits)
            lo, hi = 1, len(seq)  # shortest prefix whose text contains a stop string
            while lo < hi:
                mid = (lo + hi) // 2
                t = self.tokenizer.decode(seq[:mid], skip_special_tokens=False)
                lo, hi = (lo, mid) if any(s in t for s in stops) else (mid + 1, hi)
            cut[i] = (lo, text[:at])
            changed = True
        return changed

    def _outputs(self, state, cut, stop_ids, prompts, record_logits) -> SampleOutput:
        n = len(prompts)
        tokens = host_array(state["tokens"])[:n]
        lengths = host_array(state["lengths"])[:n]
        stopped = host_array(state["stopped"])[:n]
        out = SampleOutput([], [], [], [], [], [len(p) for p in prompts])
        for i in range(n):
            if cut[i] is not None:
                length, text = cut[i]
                seq = tokens[i, :length].tolist()
            else:
                seq = tokens[i, : lengths[i]].tolist()
                body = seq[:-1] if stopped[i] and seq and seq[-1] in stop_ids else seq
                text = self.tokenizer.decode(body, skip_special_tokens=False)
            reason = stop_reason(seq[-1] if seq else None, bool(stopped[i]), cut[i] is not None,
                                 self.end_of_turn_ids, self.eos_ids)
            out.token_ids.append(seq)
            out.texts.append(text)
            out.lengths.append(len(seq))
            out.finish_reasons.append("length" if reason == "max_tokens" else "stop")
            out.stop_reasons.append(reason)
        if record_logits:
            out.logits = host_array(state["logits"])[:n]
        return out
