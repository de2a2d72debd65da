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
import time
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


class RequestRejected(RuntimeError):
    """The server refused one request as invalid (HTTP 400/413/422, e.g. a prompt over its context
    length): that request's samples are recorded as errors, the other requests go on."""


class OpenAIEngine:
    """Client of an OpenAI-compatible chat server (vLLM: `python -m vllm.entrypoints.openai.api_server`).

    One request per prompt asks for all n samples with the seed the offline engine uses,
    request_seed(base, prompt_hash) (vLLM gives sample k seed + k), so a served model gives the records
    the offline VllmEngine gives, and the seed the stage records is the one sent. Per-sample completion
    tokens come from vLLM's `return_token_ids` (usage only sums over the n samples). top_k is always
    sent (-1 = off); start the server with `--generation-config vllm` so the model's generation_config
    adds no sampling defaults of its own (repetition penalty, min_p). A request
    the server rejects (RequestRejected) gives finish_reason "error:http_<code>: <message>" for its
    samples; connection failures and timeouts raise with the URL. A server-side reasoning parser's
    `reasoning_content` / `reasoning` field is used when present; otherwise the content is split with the
    configured reasoning style.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, reasoning: str = "think", chat_template_kwargs=None,
                 api_key: str = "", timeout_s: float = 600.0, concurrency: int = 8, tokenizer=None,
                 startup_timeout_s: float = 0.0):
        if not base_url:
            raise ValueError("engine.openai.base_url is required for kind=openai (e.g. http://host:8000/v1)")
        if reasoning not in STYLES:
            raise ValueError(f"engine.reasoning must be one of {STYLES}, got {reasoning!r}")
        self.base_url, self.model, self.reasoning = base_url.rstrip("/"), model, reasoning
        self.chat_kwargs = checks.json_object(chat_template_kwargs, "engine.chat_template_kwargs")
        self.api_key, self.timeout_s, self.concurrency = api_key, timeout_s, concurrency
        self.tokenizer = tokenizer
        if startup_timeout_s > 0:
            self.wait_ready(startup_timeout_s)

    @classmethod
    def from_config(cls, cfg):
        tok = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        o = cfg.openai
        key = os.environ.get(o.api_key_env, "") if o.api_key_env else ""
        return cls(o.base_url, cfg.model, cfg.reasoning, cfg.chat_template_kwargs, key, o.request_timeout_s,
                   o.concurrency, tok, o.startup_timeout_s)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            raise RuntimeError("OpenAIEngine.count_tokens needs engine.tokenizer (a tokenizer folder)")
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _headers(self) -> dict:
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}

    def _request(self, path: str, body: dict | None, timeout_s: float) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            message = e.read().decode("utf-8", "replace")[:500]
            if e.code in (400, 413, 422):
                raise RequestRejected(f"http_{e.code}: {message}") from e
            raise RuntimeError(f"{self.base_url}{path}: HTTP {e.code}: {message}") from e
        except TimeoutError as e:
            raise RuntimeError(f"{self.base_url}{path}: no response within {timeout_s}s "
                               "(engine.openai.request_timeout_s)") from e
        except urllib.error.URLError as e:
            raise RuntimeError(f"{self.base_url}{path}: cannot connect ({e.reason}); is the server running?") from e

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the server lists `self.model` under /models; a clear error after `timeout_s` (a
        server that is still loading a model answers nothing, or 503, for minutes)."""
        deadline, last = time.monotonic() + timeout_s, "no answer"
        while True:
            try:
                served = [m.get("id") for m in self._request("/models", None, min(10.0, timeout_s)).get("data", [])]
                if self.model in served:
                    return
                raise ValueError(f"the server at {self.base_url} serves {served}, not engine.model={self.model!r}")
            except RuntimeError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no OpenAI-compatible server ready at {self.base_url} within {timeout_s}s "
                                   f"(engine.openai.startup_timeout_s); last: {last}")
            time.sleep(1.0)

    def _one(self, messages: Messages, params: SamplingParams) -> list[Completion]:
        """All n samples of one prompt, in one request."""
        body = {"model": self.model, "messages": messages, "n": params.n, "temperature": params.temperature,
                "top_p": params.top_p, "top_k": params.top_k or -1,  # vLLM spells off -1
                "max_tokens": params.max_tokens, "seed": request_seed(params.seed, prompt_hash(messages)),
                "skip_special_tokens": False, "return_token_ids": True}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)
        if self.chat_kwargs:
            body["chat_template_kwargs"] = self.chat_kwargs
        try:
            data = self._request("/chat/completions", body, self.timeout_s)
        except RequestRejected as e:
            return [Completion("", "", "", 0, 0, f"error:{e}")] * params.n
        choices, usage = sorted(data["choices"], key=lambda c: c.get("index", 0)), data.get("usage") or {}
        if len(choices) != params.n or any(c.get("token_ids") is None for c in choices):
            raise RuntimeError(f"{self.base_url}: {len(choices)} choices for n={params.n}, token ids "
                               f"{'missing' if choices and choices[0].get('token_ids') is None else 'present'}: "
                               "the client needs a vLLM server (return_token_ids) for exact per-sample counts")
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        return [self._completion(c, prompt_tokens) for c in choices]

    def _completion(self, choice: dict, prompt_tokens: int) -> Completion:
        message = choice.get("message") or {}
        content = message.get("content") or ""
        server_reasoning = message.get("reasoning_content") or message.get("reasoning")
        finish = choice.get("finish_reason") or "stop"
        completion_tokens = len(choice["token_ids"])
        if server_reasoning is not None:
            return Completion(f"<think>\n{server_reasoning}\n</think>\n\n{content}", server_reasoning.strip(),
                              content.strip(), prompt_tokens, completion_tokens, finish)
        return make_completion(content, self.reasoning, prompt_tokens, completion_tokens, finish)

    def generate(self, requests: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        with cf.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda m: self._one(m, params), requests))
