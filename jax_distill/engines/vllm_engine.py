"""vLLM engines: offline `vllm.LLM` and a client for a running OpenAI-compatible server (e.g. vLLM's).

The offline engine must run where vLLM is installed (GPU hosts, or `.venv-vllm` from
scripts/setup_vllm.sh on CPU) and, since vLLM spawns workers, under an `if __name__ == "__main__"`
guard (the stage entry points have one). Prompts are rendered with the model's chat template
(`chat_template_kwargs` carries Qwen's enable_thinking or gpt-oss's reasoning_effort) and tokenized
here, so prompt token counts are exact; outputs are decoded with special tokens kept so <think> and
harmony channel markers survive for the reasoning parsers. Every request gets its own seed derived
from the base seed and the prompt hash, so results do not depend on batching.
On CPU: enforce_eager=True, set VLLM_CACHE_ROOT, head_dim >= 32 (see ENVIRONMENT.md), and a small
gpu_memory_utilization: there it is the share of host memory vLLM reserves (0.1 is plenty for tests).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
import urllib.error
import urllib.request

from jax_distill import checks
from jax_distill.engines.base import Completion, Messages, SamplingParams, prompt_hash, request_seed
from jax_distill.engines.reasoning import STYLES, make_completion


def vllm_stop_reason(output, requested_stop_ids) -> str:
    """engines.base.STOP_REASONS of a vLLM CompletionOutput. Its stop_reason is None at the tokenizer's
    EOS, the string at a stop string, the id at a stop id: one requested, or another EOS id of the
    model's generation config (Qwen's <|im_end|> / <|endoftext|> pair), which counts as eos."""
    if output.finish_reason == "length":
        return "max_tokens"
    if output.finish_reason not in (None, "stop"):
        return "error"  # aborted
    reason = output.stop_reason
    return "stop" if isinstance(reason, str) or reason in requested_stop_ids else "eos"


class VllmEngine:
    name = "vllm"

    def __init__(self, model: str, tokenizer: str = "", reasoning: str = "think", chat_template_kwargs=None,
                 tensor_parallel_size: int = 1, dtype: str = "auto", max_model_len: int = 0,
                 gpu_memory_utilization: float = 0.9, enforce_eager: bool = False, batch_size: int = 256, **llm_kwargs):
        from vllm import LLM

        if reasoning not in STYLES:
            raise ValueError(f"engine.reasoning must be one of {STYLES}, got {reasoning!r}")
        self.model, self.reasoning, self.batch_size = model, reasoning, batch_size
        self.chat_kwargs = checks.json_object(chat_template_kwargs, "engine.chat_template_kwargs")
        # On the CPU backend gpu_memory_utilization is the share of host memory vLLM reserves.
        kwargs = dict(model=model, tokenizer=tokenizer or model, tensor_parallel_size=tensor_parallel_size,
                      dtype=dtype, enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                      **llm_kwargs)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.model_config.max_model_len

    @classmethod
    def from_config(cls, cfg):
        v = cfg.vllm
        return cls(cfg.model, cfg.tokenizer, cfg.reasoning, cfg.chat_template_kwargs, v.tensor_parallel_size,
                   v.dtype, v.max_model_len, v.gpu_memory_utilization, v.enforce_eager, cfg.batch_size)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: Messages) -> list[int]:
        """Chat template (+ kwargs) -> prompt token ids; the template adds BOS itself where it has one."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **self.chat_kwargs)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VllmParams

        out: list[list[Completion]] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            ids = [self.render(m) for m in batch]
            # vLLM rejects the whole batch for one over-long prompt: answer those alone with an error
            fits = [i for i, x in enumerate(ids) if len(x) < self.max_model_len]
            results: list[list[Completion]] = [
                [Completion("", "", "", len(x), 0, "error:prompt_too_long")] * params.n for x in ids]
            sp = [VllmParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                             top_k=params.top_k or -1,  # vLLM spells off -1
                             max_tokens=min(params.max_tokens, self.max_model_len - len(ids[i])),
                             seed=request_seed(params.seed, prompt_hash(batch[i])),
                             stop=list(params.stop) or None, stop_token_ids=list(params.stop_token_ids or ()) or None,
                             skip_special_tokens=False) for i in fits]
            outputs = self.llm.generate([{"prompt_token_ids": ids[i]} for i in fits], sp, use_tqdm=False) if fits else []
            for i, res in zip(fits, outputs):
                n_prompt = len(res.prompt_token_ids)
                results[i] = [dataclasses.replace(
                    make_completion(o.text, self.reasoning, n_prompt, len(o.token_ids), o.finish_reason or "stop"),
                    stop_reason=vllm_stop_reason(o, params.stop_token_ids or ())) for o in res.outputs]
            out.extend(results)
        return out


class OpenAIEngine:
    """Client of an OpenAI-compatible chat server (vLLM: `python -m vllm.entrypoints.openai.api_server`).

    Each of the n samples is its own request with its own derived seed, so the server's usage numbers
    are exact per completion. A server-side reasoning parser's `reasoning_content` / `reasoning` field is
    used when present; otherwise the content is split with the configured reasoning style.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, reasoning: str = "think", chat_template_kwargs=None,
                 api_key: str = "", timeout_s: float = 600.0, concurrency: int = 8, tokenizer=None):
        if not base_url:
            raise ValueError("engine.openai.base_url is required for kind=openai (e.g. http://host:8000/v1)")
        if reasoning not in STYLES:
            raise ValueError(f"engine.reasoning must be one of {STYLES}, got {reasoning!r}")
        self.base_url, self.model, self.reasoning = base_url.rstrip("/"), model, reasoning
        self.chat_kwargs = checks.json_object(chat_template_kwargs, "engine.chat_template_kwargs")
        self.api_key, self.timeout_s, self.concurrency = api_key, timeout_s, concurrency
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, cfg):
        tok = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        o = cfg.openai
        key = os.environ.get(o.api_key_env, "") if o.api_key_env else ""
        return cls(o.base_url, cfg.model, cfg.reasoning, cfg.chat_template_kwargs, key, o.request_timeout_s,
                   o.concurrency, tok)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            raise RuntimeError("OpenAIEngine.count_tokens needs engine.tokenizer (a tokenizer folder)")
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _post(self, body: dict) -> dict:
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.base_url}: HTTP {e.code}: {e.read().decode('utf-8', 'replace')[:500]}") from e

    def _one(self, messages: Messages, params: SamplingParams, k: int) -> Completion:
        body = {"model": self.model, "messages": messages, "n": 1, "temperature": params.temperature,
                "top_p": params.top_p, "max_tokens": params.max_tokens,
                "seed": request_seed(params.seed, f"{prompt_hash(messages)}:{k}"),
                "skip_special_tokens": False}
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        if self.chat_kwargs:
            body["chat_template_kwargs"] = self.chat_kwargs
        data = self._post(body)
        choice, usage = data["choices"][0], data.get("usage") or {}
        message = choice.get("message") or {}
        content = message.get("content") or ""
        server_reasoning = message.get("reasoning_content") or message.get("reasoning")
        finish = choice.get("finish_reason") or "stop"
        prompt_tokens, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        if server_reasoning is not None:
            return Completion(f"<think>\n{server_reasoning}\n</think>\n\n{content}", server_reasoning.strip(),
                              content.strip(), prompt_tokens, completion_tokens, finish)
        return make_completion(content, self.reasoning, prompt_tokens, completion_tokens, finish)

    def generate(self, requests: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        with cf.ThreadPoolExecutor(self.concurrency) as pool:
            futures = [[pool.submit(self._one, m, params, k) for k in range(params.n)] for m in requests]
            return [[f.result() for f in row] for row in futures]
