"""The one small interface every text generator implements: chat requests + sampling params -> n
completions each, with token counts and the reasoning separated from the final answer.

Implementations: engines/vllm_engine.py (offline vllm.LLM and an OpenAI-compatible server client),
engines/jax_engine.py (the project's JAX sampler), engines/procedural.py (a stand-in teacher for
machines without a big model). Stages only call `generate` and `count_tokens`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

from jax_distill.sampling_params import SamplingParams  # the one sampling type (re-exported for engines)


# Why a completion ended: the assistant turn's closing token, EOS, a stop string (or a requested stop
# id), the max_tokens budget; refused requests; engines that report only "stop" (procedural, OpenAI).
STOP_REASONS = ("end_of_turn", "eos", "stop", "max_tokens", "error", "unreported")


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str                     # everything the model generated (reasoning markup included)
    reasoning: str                # the reasoning only, without <think> tags / harmony channel markup
    answer_text: str              # the final answer part (after </think>, harmony "final" channel)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str            # "stop" | "length" | "error:<why>" (request refused, e.g. prompt too long)
    stop_reason: str = ""         # why it ended (STOP_REASONS); "" = what finish_reason tells: length ->
                                  # max_tokens, error:* -> error, stop -> unreported (the engine did not say which)

    def __post_init__(self):
        if not self.stop_reason:
            derived = {"length": "max_tokens", "stop": "unreported"}.get(self.finish_reason, "error")
            object.__setattr__(self, "stop_reason", derived)
        if self.stop_reason not in STOP_REASONS:
            raise ValueError(f"Completion.stop_reason must be one of {STOP_REASONS}, got {self.stop_reason!r}")


Messages = list[dict]             # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@runtime_checkable
class Engine(Protocol):
    name: str                     # engine kind, e.g. "vllm", "openai", "jax", "procedural"
    model: str                    # model path / name, recorded in provenance
    tokenizer: Any                # HF tokenizer of the model, or None

    def generate(self, requests: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        """One list of `params.n` completions per request, in request order."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this engine's tokenizer (no special tokens added)."""
        ...


def prompt_hash(messages: Messages) -> str:
    """sha256 of the chat messages (stable JSON), recorded as provenance and used to derive seeds."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_seed(base: int | None, key: str) -> int | None:
    """A per-request seed derived from the base seed and a stable key (e.g. a prompt hash), so a sample's
    randomness does not depend on which batch or shard it was generated in."""
    import hashlib

    if base is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{base}:{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF
