"""The project's own JAX sampler behind the Engine interface (engines/base.py).

Chat requests are rendered with the same chat template the training data used (data/chat.py:
ChatFormat, so a student is prompted exactly as it was trained), tokenized without extra special
tokens, sorted by length so batches share a prompt bucket, and sampled in batches of `batch_size`.
Each sample's random stream is keyed by (seed, prompt, sample index), never by its batch, so results do
not depend on batch size or order. The text is split into reasoning and answer by the template's style
(think blocks, or harmony channels for gpt-oss). Generation stops where the template's assistant turn
ends (ChatFormat.turn_end_ids, e.g. <|im_end|>) as well as at EOS, which for base checkpoints differ
(Qwen base: EOS <|endoftext|>); each Completion says which of the two, a stop string or max_tokens ended it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.engines.base import Completion, Messages, request_seed
from jax_distill.engines.reasoning import split_reasoning
from jax_distill.parallel.sharding import MESH_AXES
from jax_distill.sampling import Sampler
from jax_distill.sampling_params import SamplingParams

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")  # "auto": bfloat16 on accelerators, float32 on CPU
CHAT_FIELDS = ("system", "template", "template_date", "template_kwargs", "end_of_turn")  # of the data config


def chat_config(**overrides) -> ConfigDict:
    """Chat-template fields (a subset of the training `data` config, same meaning and defaults)."""
    from jax_distill.data.pipeline import data_config

    data = data_config()
    cfg = ConfigDict({k: data[k] for k in CHAT_FIELDS})
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
        from jax_distill.data.chat import ChatFormat, DataError

        self.model = model_name or getattr(model, "family", "jax")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.format = ChatFormat(tokenizer, chat if chat is not None else chat_config())
        self.style = reasoning or ("harmony" if self.format.style == "harmony" else "think")
        try:
            self.end_of_turn_ids = self.format.turn_end_ids()
        except DataError as e:
            raise DataError(f"jax engine: cannot tell which token ends the assistant turn, so where to stop "
                            f"generating ({e}); name it in the chat config's end_of_turn") from e
        self.sampler = Sampler(
            model, tokenizer, rules=rules, chunk_size=chunk_size, end_of_turn_ids=self.end_of_turn_ids
        )

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
        sample = dataclasses.replace(params, n=1, seed=seed)  # the sampler draws one completion per row
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
                    stop_reason=res.stop_reasons[k],
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


def load_model(path: str, tokenizer: str, dtype: str, compute_dtype: str, mesh: ConfigDict):
    """(model, tokenizer, rules) for an HF folder (local or gs://): weights placed on a (data, fsdp,
    tensor) mesh of mesh.data x mesh.fsdp x mesh.tensor devices; tokenizer "" = the model's folder.
    The JAX engine and the evaluation stage both load their student here."""
    import jax
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from jax_distill.models import from_pretrained
    from jax_distill.models.hf_io import local_folder
    from jax_distill.parallel.sharding import ShardingRules, make_mesh

    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    rules = ShardingRules(make_mesh(mesh.data, mesh.fsdp, mesh.tensor))
    model = from_pretrained(path, dtype=jnp.dtype(dtype), compute_dtype=jnp.dtype(compute_dtype or dtype), rules=rules)
    return model, AutoTokenizer.from_pretrained(local_folder(tokenizer or path)), rules


def validate_placement(config: ConfigDict, prefix: str) -> None:
    """The dtype, compute_dtype and mesh fields at `prefix` ("engine.jax"; "" = the top level), each
    failure naming its field."""
    field = lambda name: f"{prefix}.{name}" if prefix else name  # noqa: E731
    checks.one_of(config, field("dtype"), DTYPES)
    checks.one_of(config, field("compute_dtype"), ("",) + DTYPES[1:])
    sizes = []
    for axis in MESH_AXES:
        checks.is_type(config, field(f"mesh.{axis}"), int)
        sizes.append(checks.get(config, field(f"mesh.{axis}")))
        checks.need(sizes[-1] >= 1 or sizes[-1] == -1, field(f"mesh.{axis}"), f"must be >= 1 or -1; got {sizes[-1]}")
    checks.need(sizes.count(-1) <= 1, field("mesh"), "at most one size may be -1 (all remaining devices)")


def from_config(cfg: ConfigDict) -> JaxEngine:
    """From a validated `engine` sub-config (engines.validate): model, tokenizer, reasoning,
    chat_template_kwargs (JSON), batch_size, and jax.{dtype, compute_dtype, mesh} for where the weights go."""
    model, tokenizer, rules = load_model(cfg.model, cfg.tokenizer, cfg.jax.dtype, cfg.jax.compute_dtype, cfg.jax.mesh)
    template_kwargs = checks.json_object(cfg.chat_template_kwargs, "engine.chat_template_kwargs")
    return JaxEngine(
        model,
        tokenizer,
        rules=rules,
        batch_size=cfg.batch_size,
        chat=chat_config(template_kwargs=json.dumps(template_kwargs)),
        model_name=str(cfg.model),
        reasoning=cfg.reasoning,
    )
