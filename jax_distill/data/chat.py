"""Chat formatting and loss masks: one (question, trace, answer) -> token ids + assistant-token mask.

Convention (the paper's): user = question; assistant = "<think>\\n" + trace + "\\n</think>\\n\\n" + answer.
This is exactly what Qwen3's own template renders for an assistant message with `reasoning_content`
(`'<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n')`), and an
answer-only record (trace "") gives the empty think block "<think>\\n\\n</think>\\n\\n" that Qwen3 writes
with thinking disabled. The text goes through the student tokenizer's chat template, by its style:
  - templates that read `reasoning_content` (Qwen3, Qwen3.5): trace passed as reasoning_content;
  - harmony templates (gpt-oss, `<|channel|>`): trace passed as `thinking` (the analysis channel) and
    the answer as content (final channel, ended by <|return|>, which gpt-oss's template renders only in
    training for this reason);
  - any other template (Llama-3, plain ChatML): the think block is written into the content.
Tokenizers without a chat template (base models) use FALLBACK_TEMPLATE, documented below; evaluation
must prompt such students with the same template (`chat_template(tokenizer, cfg)` returns it).

Loss mask: the prompt is rendered alone with add_generation_prompt=True and then the whole
conversation; the first must be a prefix of the second both as text and as tokens, else DataError.
The assistant tokens are those after the prompt, up to and including the end-of-turn token (the last
special token the template writes for the turn, or `end_of_turn`); what a template writes after it
(ChatML's "\\n") belongs to no turn and is dropped. Templates that stamp today's date (Llama-3.1,
gpt-oss) get a fixed `template_date` so the same data gives the same tokens on every run (exact resume).
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np

from jax_distill import checks

TEMPLATES = ("auto", "chat", "fallback")  # data.template: auto = the tokenizer's own, else FALLBACK_TEMPLATE

class DataError(ValueError):
    """Bad data or data config; the message names the file, record and field where there is one."""


# Base models without a chat template: one documented format (bos if the tokenizer has one; eos ends
# the assistant turn). Prompt: "[system\n\n]User: {question}\n\nAssistant:\n"; the assistant turn then
# holds the think block and answer like every other family.
FALLBACK_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
    "{%- elif m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n\n' }}"
    "{%- else %}{{ 'Assistant:\n' + m['content'] + eos_token }}{% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ 'Assistant:\n' }}{% endif -%}"
)


def think_block(trace: str, answer: str) -> str:
    """The assistant text as the paper trains it (and Qwen3's template renders it)."""
    return "<think>\n" + trace.strip("\n") + "\n</think>\n\n" + answer.lstrip("\n")


def chat_template(tokenizer, cfg) -> str:
    """The template the data is rendered with: the tokenizer's own, or FALLBACK_TEMPLATE."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # named templates: use "default"
        own = own.get("default")
    if cfg.template == "fallback" or (cfg.template == "auto" and not own):
        if not tokenizer.eos_token:
            raise DataError("fallback chat template needs an eos token; the tokenizer has none")
        return FALLBACK_TEMPLATE
    if cfg.template in ("chat", "auto"):
        if not own:
            raise DataError("data.template='chat' but the tokenizer has no chat template; use 'fallback' or 'auto'")
        return own
    raise DataError(f"data.template must be one of {', '.join(TEMPLATES)}, got {cfg.template!r}")


def template_day(date: str) -> datetime.datetime:
    """data.template_date ("YYYY-MM-DD") as the day templates that stamp a date are given."""
    try:
        return datetime.datetime.strptime(date, "%Y-%m-%d")
    except (TypeError, ValueError):
        raise checks.ConfigError(f"config.data.template_date: must be YYYY-MM-DD; got {date!r}") from None


def _fixed_date(template: str, date: str) -> str:
    """The template with `strftime_now` shadowed by a macro that formats a fixed date (templates see
    only JSON-like variables, so the function itself cannot be passed in)."""
    if "strftime_now" not in template:
        return template
    day = template_day(date)
    expr = "fmt"
    for d in "aAbBdHIjmMpSyY":
        expr += f".replace('%{d}', '{day.strftime('%' + d)}')"
    return "{%- macro strftime_now(fmt) -%}{{ " + expr + " }}{%- endmacro -%}" + template


class ChatFormat:
    """Renders and tokenizes one example; picklable so Grain workers can run it."""

    def __init__(self, tokenizer, cfg):
        self.tokenizer = tokenizer
        self.template = chat_template(tokenizer, cfg)
        self.system = cfg.system
        if "<|channel|>" in self.template:
            self.style = "harmony"
        elif "reasoning_content" in self.template:
            self.style = "reasoning_content"
        else:
            self.style = "inline"
        self._render_template = _fixed_date(self.template, cfg.template_date)
        self.template_kwargs = checks.json_object(cfg.template_kwargs, "data.template_kwargs")
        special = set(tokenizer.all_special_ids)
        special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.special_ids = special
        self.end_of_turn = None
        if cfg.end_of_turn:
            ids = tokenizer.convert_tokens_to_ids([cfg.end_of_turn])
            if ids[0] is None or ids[0] == tokenizer.unk_token_id:
                raise DataError(f"data.end_of_turn={cfg.end_of_turn!r} is not a token of the tokenizer")
            self.end_of_turn = ids[0]

    def messages(self, question: str, trace: str, answer: str) -> list[dict[str, Any]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": question})
        if self.style == "harmony":
            msgs.append({"role": "assistant", "thinking": trace.strip("\n"), "content": answer.lstrip("\n")})
        elif self.style == "reasoning_content":
            msgs.append({"role": "assistant", "reasoning_content": trace, "content": answer})
        else:
            msgs.append({"role": "assistant", "content": think_block(trace, answer)})
        return msgs

    def render(self, messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self._render_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, question: str, trace: str, answer: str, where: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Token ids [L] and assistant mask [L] (1 on the assistant turn incl. its end-of-turn token)."""
        msgs = self.messages(question, trace, answer)
        prompt = self.render(msgs[:-1], add_generation_prompt=True)
        full = self.render(msgs, add_generation_prompt=False)
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: chat template is not prefix-preserving: the prompt rendered with "
                f"add_generation_prompt=True ({prompt[-60:]!r}) does not start the full conversation "
                f"({full[len(prompt) - 60 : len(prompt) + 20]!r}); cannot tell the assistant tokens apart"
            )
        prompt_ids, full_ids = self._ids(prompt), self._ids(full)
        n = len(prompt_ids)
        if full_ids[:n] != prompt_ids:
            raise DataError(
                f"{where}: tokens of the prompt are not a prefix of the conversation's tokens "
                f"(merge across the boundary after {prompt[-30:]!r}); the mask would be ambiguous"
            )
        reply = full_ids[n:]
        if self.end_of_turn is not None:
            ends = [i for i, t in enumerate(reply) if t == self.end_of_turn]
        else:
            ends = [i for i, t in enumerate(reply) if t in self.special_ids]
        if not ends:
            raise DataError(
                f"{where}: the template wrote no end-of-turn token after the assistant reply "
                f"({self.tokenizer.decode(reply[-8:])!r}); set data.end_of_turn"
            )
        ids = np.asarray(full_ids[: n + ends[-1] + 1], np.int32)
        mask = np.zeros(len(ids), np.int32)
        mask[n:] = 1
        return ids, mask

    def turn_end_ids(self) -> tuple[int, ...]:
        """The token that closes an assistant turn in the format the student was trained with (the last
        token `encode` keeps: data.end_of_turn, else the template's last special token of the turn).
        Generation stops on it beside EOS: a base checkpoint's EOS (Qwen base: <|endoftext|>) is not
        what ends its ChatML turn (<|im_end|>), and a student that closed its turn would go on writing."""
        if self.end_of_turn is not None:  # named: no probe (the template may not render the training turn)
            return (self.end_of_turn,)
        ids, _ = self.encode("What is 1 + 1?", "1 + 1 = 2.", "The answer is 2.", where="end-of-turn probe")
        return (int(ids[-1]),)
