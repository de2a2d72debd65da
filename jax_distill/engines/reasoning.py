"""Split a teacher's raw output into (reasoning, final answer) for the two teacher families.

- "think" (Qwen3 / Qwen3.5 thinking mode, DeepSeek-R1 style): `<think>reasoning</think>answer`. The chat
  template may already open the block in the prompt, so the output can start inside it (no `<think>`).
  An unclosed block (length cut) is all reasoning and no answer.
- "harmony" (gpt-oss): `<|channel|>analysis<|message|>reasoning<|end|><|start|>assistant<|channel|>final
  <|message|>answer<|return|>`; commentary channels count as reasoning; the prompt may end with
  `<|start|>assistant` so the output starts at `<|channel|>`. Text must be decoded with special tokens kept.
- "none": no reasoning markup; everything is the answer.
"""

from __future__ import annotations

import re

STYLES = ("think", "harmony", "none")
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|return|>", "<|end|>", "<|eot_id|>", "</s>", "<pad>")
_HARMONY_MSG = re.compile(
    r"(?:<\|start\|>\s*assistant\s*)?<\|channel\|>\s*(?P<channel>\w+)(?:(?!<\|channel\|>).)*?<\|message\|>(?P<body>.*?)"
    r"(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)",
    re.DOTALL,
)


def _strip_end(text: str) -> str:
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for marker in _END_MARKERS:
            if text.endswith(marker):
                text, changed = text[: -len(marker)].rstrip(), True
    return text


def split_think(text: str) -> tuple[str, str]:
    text = _strip_end(text)
    if "</think>" not in text:
        if "<think>" in text:  # opened, never closed: cut off while thinking
            before, _, inside = text.partition("<think>")
            return inside.strip(), before.strip()
        return "", text.strip()
    reasoning, _, answer = text.partition("</think>")
    reasoning = reasoning.split("<think>", 1)[1] if "<think>" in reasoning else reasoning
    return reasoning.strip(), answer.replace("<think>", "").replace("</think>", "").strip()


def split_harmony(text: str) -> tuple[str, str]:
    reasoning, final = [], []
    matched = False
    for m in _HARMONY_MSG.finditer(text):
        matched = True
        body = m["body"].strip()
        (final if m["channel"] == "final" else reasoning).append(body)
    if not matched:
        return "", _strip_end(text)
    return "\n\n".join(r for r in reasoning if r), "\n\n".join(f for f in final if f)


def split_reasoning(text: str, style: str) -> tuple[str, str]:
    """(reasoning, answer_text) of one completion."""
    if style == "think":
        return split_think(text)
    if style == "harmony":
        return split_harmony(text)
    if style == "none":
        return "", _strip_end(text)
    raise ValueError(f"reasoning style must be one of {STYLES}, got {style!r}")


def make_completion(text: str, style: str, prompt_tokens: int, completion_tokens: int, finish_reason: str):
    """A Completion from raw output text. A thinking model cut off by max_tokens before closing its
    block has produced only reasoning, even when the template opened the block in the prompt."""
    from jax_distill.engines.base import Completion

    reasoning, answer = split_reasoning(text, style)
    if style == "think" and finish_reason == "length" and "</think>" not in text:
        reasoning, answer = _strip_end(text.replace("<think>", "")).strip(), ""
    return Completion(text, reasoning, answer, prompt_tokens, completion_tokens, finish_reason)
