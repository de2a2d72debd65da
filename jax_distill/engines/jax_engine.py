"""The project's own JAX sampler behind the Engine interface (engines/base.py).

Chat requests are rendered with the same chat template the training data used (data/chat.py:
ChatFormat, so a student is prompted exactly as it was trained), tokenized without extra special
tokens, sorted by length so batches share a prompt bucket, and sampled in batches of `batch_size`.
Each sample's random stream is keyed by (seed, prompt, sample index), never by its batch, so results do
not depend on batch size or order. The text is split into reasoning and answer by the template's style
(think blocks, or harmony channels for gpt-oss).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ml_collections import ConfigDict

from jax_distill.engines.base import Completion, Messages, SamplingParams, request_seed
from jax_distill.engines.reasoning import split_reasoning
from jax_distill.sampling import SampleParams, Sampler

log = logging.getLogger(__name__)


def chat_config(**overrides) -> ConfigDict:
    """Chat-template fields (a subset of the training `data` config, same meaning and defaults)."""
    from jax_distill.data.pipeline import data_config

    data = data_config()
    cfg = ConfigDict({k: data[k] for k in ("system", "template", "template_date", "template_kwargs", "end_of_turn")})
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


class JaxEngine:
    name = "jax"

    def __init__(
        self,
        model,
        tokenizer,
        rules=None,
        batch_size: int = 32,
        chat: ConfigDict | None = None,
        model_name: str = "",
        chunk_size: int = 64,
        reasoning: str = "",
    ):
        """chat: chat_config() fields (template, system, template_kwargs...); reasoning: how outputs mark
        reasoning (think | harmony | none; "" = from the template: harmony for gpt-oss, else think)."""
        from jax_distill.data.chat import ChatFormat

        self.model = model_name or getattr(model, "family", "jax")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.format = ChatFormat(tokenizer, chat if chat is not None else chat_config())
        self.style = reasoning or ("harmony" if self.format.style == "harmony" else "think")
        self.sampler = Sampler(model, tokenizer, rules=rules, chunk_size=chunk_size)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Messages) -> list[int]:
        text = self.format.render(messages, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        prompts = [self.prompt_ids(m) for m in requests]
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        jobs = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        jobs.sort(key=lambda ij: -len(prompts[ij[0]]))  # similar lengths share a batch (and a bucket)
        sample = SampleParams(
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=max(params.top_k or 0, 0),
            seed=seed,
            stop=tuple(params.stop),
        )
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        start, done_tokens = time.time(), 0
        for b in range(0, len(jobs), self.batch_size):
            batch = jobs[b : b + self.batch_size]
            ids = [request_seed(seed, f"{prompts[i]}:{j}") for i, j in batch]
            res = self.sampler.generate([prompts[i] for i, _ in batch], sample, sample_ids=ids)
            for k, (i, j) in enumerate(batch):
                reasoning, answer = split_reasoning(res.texts[k], self.style)
                out[i][j] = Completion(
                    text=res.texts[k],
                    reasoning=reasoning,
                    answer_text=answer,
                    prompt_tokens=len(prompts[i]),
                    completion_tokens=res.lengths[k],
                    finish_reason=res.finish_reasons[k],
                )
            done_tokens += sum(res.lengths)
            elapsed = time.time() - start
            log.info(
                "jax engine: %d/%d samples, %.0f tok/s, ETA %.0fs",
                b + len(batch),
                len(jobs),
                done_tokens / max(elapsed, 1e-9),
                elapsed / (b + len(batch)) * (len(jobs) - b - len(batch)),
            )
        return out  # type: ignore[return-value]


def load(
    path: str, dtype: str = "auto", compute_dtype: str = "", mesh: Any = None, tokenizer: str = "", **kwargs
) -> JaxEngine:
    """A JaxEngine for an HF folder (local or gs://), weights placed on a (data, fsdp, tensor) mesh.
    dtype "auto": bfloat16 on accelerators, float32 on CPU."""
    import jax
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from jax_distill.models import from_pretrained
    from jax_distill.models.hf_io import local_folder
    from jax_distill.parallel.sharding import ShardingRules, make_mesh

    if dtype in ("", "auto"):
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    mesh = dict(mesh or {})
    rules = ShardingRules(make_mesh(mesh.get("data", -1), mesh.get("fsdp", 1), mesh.get("tensor", 1)))
    model = from_pretrained(path, dtype=jnp.dtype(dtype), compute_dtype=jnp.dtype(compute_dtype or dtype), rules=rules)
    tok = AutoTokenizer.from_pretrained(local_folder(tokenizer or path))
    return JaxEngine(model, tok, rules=rules, model_name=str(path), **kwargs)


def from_config(cfg) -> JaxEngine:
    """From the `engine` sub-config (jax_distill.engines.default_config): model, tokenizer, reasoning,
    chat_template_kwargs (JSON), dtype, batch_size; tensor_parallel_size becomes the mesh's tensor axis
    (the rest of the devices split the batch)."""
    import json

    get = lambda k, d: cfg.get(k, d) if hasattr(cfg, "get") else getattr(cfg, k, d)  # noqa: E731
    kwargs = get("chat_template_kwargs", "") or "{}"
    kwargs = json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs)
    return load(
        cfg.model,
        dtype=get("dtype", "auto") or "auto",
        mesh={"data": -1, "fsdp": 1, "tensor": get("tensor_parallel_size", 1) or 1},
        tokenizer=get("tokenizer", "") or "",
        batch_size=get("batch_size", 32) or 32,
        chat=chat_config(template_kwargs=json.dumps(kwargs)),
        reasoning=get("reasoning", "") or "",
    )
