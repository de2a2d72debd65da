"""A procedural teacher: a STAND-IN for a reasoning model on machines without one.

It recognises the built-in arithmetic word problems (problems/synthetic.py grammar) and plain "What is
<expression>?" questions inside the user turn and writes the kind of trace a thinking model writes:
it restates the problem, works step by step with explicit arithmetic, hesitates, takes a detour that it
then corrects, checks itself, and concludes `<think>...</think>The answer is \\boxed{N}.`. With
probability `wrong_rate` a sample carries an uncorrected slip, so its final answer is wrong and
verification has something to reject. Questions it cannot parse get a short unsure trace without an
answer. Output is deterministic in (seed, prompt, sample index). Nothing here is a language model: it
exists so the whole pipeline (verify, compress, truncate, train, evaluate) runs end to end on a laptop.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import random
import re

from jax_distill.engines.base import Completion, Messages, SamplingParams
from jax_distill.problems import synthetic

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "boxes": "+"}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

OPENERS = ("Okay, let me read the problem carefully.", "Alright, let's see what the question is asking.",
           "Let me start by restating the problem in my own words.")
HESITATIONS = ("Hmm.", "Hmm, let me think about this for a second.", "Wait, let me re-read that sentence.",
               "Okay.", "Let me be careful here.", "Right.")
CONNECTIVES = ("First", "Next", "Then", "After that", "Now")


class ProceduralTeacher:
    name = "procedural"

    def __init__(self, wrong_rate: float = 0.2, detour_rate: float = 0.5, verbosity: int = 1, seed: int = 0,
                 tokenizer=None, model: str = "procedural-teacher-v1"):
        if not 0.0 <= wrong_rate <= 1.0 or not 0.0 <= detour_rate <= 1.0:
            raise ValueError(f"procedural teacher rates must be in [0, 1], got {wrong_rate}, {detour_rate}")
        self.wrong_rate, self.detour_rate, self.verbosity, self.seed = wrong_rate, detour_rate, verbosity, seed
        self.tokenizer, self.model = tokenizer, model

    @classmethod
    def from_config(cls, cfg):
        tok = None
        if cfg.get("tokenizer"):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        p = cfg.procedural
        return cls(p.wrong_rate, p.detour_rate, p.verbosity, p.seed, tok)

    # ------------------------------------------------------------------ Engine interface

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return len(_TOKEN.findall(text))

    def generate(self, requests: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for messages in requests:
            key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
            prompt_tokens = self.count_tokens("".join(m["content"] for m in messages))
            user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            samples = []
            for k in range(params.n):
                rng = random.Random(f"{self.seed}:{params.seed}:{key}:{k}")
                reasoning, answer = self.write(user, rng)
                samples.append(self._finish(reasoning, answer, prompt_tokens, params.max_tokens))
            out.append(samples)
        return out

    def _finish(self, reasoning: str, answer: str, prompt_tokens: int, max_tokens: int) -> Completion:
        text = f"<think>\n{reasoning}\n</think>\n\n{answer}"
        n = self.count_tokens(text)
        if n <= max_tokens:
            return Completion(text, reasoning, answer, prompt_tokens, n, "stop")
        cut = self._cut(text, max_tokens)  # ran out of budget mid-thought, as a real model does
        inside = cut.split("<think>", 1)[-1].split("</think>", 1)[0].strip()
        answer = cut.split("</think>", 1)[1].strip() if "</think>" in cut else ""
        return Completion(cut, inside, answer, prompt_tokens, self.count_tokens(cut), "length")

    def _cut(self, text: str, max_tokens: int) -> str:
        if self.tokenizer is not None:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return text[: enc["offset_mapping"][max_tokens - 1][1]]
        spans = [m.end() for m in _TOKEN.finditer(text)]
        return text[: spans[max_tokens - 1]]

    # ------------------------------------------------------------------ writing

    def write(self, user: str, rng: random.Random) -> tuple[str, str]:
        """(reasoning, answer) for the question inside a user turn."""
        for chunk in [user] + [c for c in re.split(r"\n\s*\n", user) if c.strip()]:
            steps = synthetic.solve(chunk.strip())
            if steps:
                return self._word_problem(steps, rng)
        m = re.search(r"[Ww]hat is ([\d\s+\-*()]+)\?", user)
        if m:
            return self._expression(m.group(1), rng)
        reasoning = (f"{rng.choice(OPENERS)} {rng.choice(HESITATIONS)} I don't recognise the structure of this "
                     "problem and cannot work it out reliably. I would rather not guess.")
        return reasoning, "I am not able to determine the answer."

    def _slip(self, value: int, rng: random.Random) -> int:
        return value + rng.choice((-2, -1, 1, 2, 10)) if value > 2 else value + rng.choice((1, 2))

    def _word_problem(self, steps, rng: random.Random) -> tuple[str, str]:
        start, ops = steps[0], steps[1:]
        m = re.match(r"^(\w+) has \d+ (\w+)\.$", start.sentence)
        name, item = m.group(1), m.group(2)
        lines = [rng.choice(OPENERS),
                 f"{name} starts with {start.after} {item}, and then {len(ops)} thing{'s' if len(ops) > 1 else ''} "
                 f"happen{'' if len(ops) > 1 else 's'} to them. The question asks how many {item} {name} has at the end.",
                 "I'll go through it one sentence at a time and keep a running total."]
        wrong_at, wrong_value = self._plan_slip(ops, start.after, rng) if rng.random() < self.wrong_rate else (-1, 0)
        detour_at = rng.randrange(len(ops)) if rng.random() < self.detour_rate else -1
        value = start.after
        for i, step in enumerate(ops):
            lines.append(f"{CONNECTIVES[min(i, len(CONNECTIVES) - 1)]}: \"{step.sentence}\"")
            if self.verbosity > 0 and rng.random() < 0.4:
                lines.append(rng.choice(HESITATIONS))
            new = self._apply(step, value)
            if step.op == "boxes":
                k, mm = step.operands
                lines.append(f"That is {k} boxes of {mm}, so {k} * {mm} = {k * mm} {item} in the boxes.")
                operand = k * mm
            else:
                operand = step.operands[0]
            meaning = {"add": "adds", "sub": "takes away", "boxes": "adds", "mul": "multiplies by", "div": "divides by"}
            if self.verbosity > 1:
                lines.append(f"This {meaning[step.op]} {operand}.")
            if i == detour_at and i != wrong_at:
                bad = self._slip(new, rng)
                lines.append(f"So {value} {_SYMBOL[step.op]} {operand} = {bad}.")
                lines.append(f"Hmm, wait. That doesn't look right. Let me redo it: {value} {_SYMBOL[step.op]} "
                             f"{operand} = {new}, not {bad}. Good thing I checked.")
            elif i == wrong_at:
                new = wrong_value  # the uncaught mistake, carried to the end
                lines.append(f"So {value} {_SYMBOL[step.op]} {operand} = {new}.")
            else:
                lines.append(f"So {value} {_SYMBOL[step.op]} {operand} = {new}.")
            lines.append(f"Now {name} has {new} {item}.")
            value = new
        lines.append(self._self_check(ops, value, start.after, wrong_at, rng))
        lines.append(f"So {name} has {value} {item} now.")
        return "\n".join(lines), f"{name} has {value} {item} now. The answer is \\boxed{{{value}}}."

    def _plan_slip(self, ops, start: int, rng: random.Random) -> tuple[int, int]:
        """(step index, wrong value there) such that the final answer ends up wrong (a slip followed by
        an integer division can vanish; then another step is tried, the last one always works)."""
        def final(at: int, bad: int) -> int:
            value = start
            for i, step in enumerate(ops):
                value = bad if i == at else self._apply(step, value)
            return value

        correct = final(-1, 0)
        order = list(range(len(ops)))
        rng.shuffle(order)
        for at in order + [len(ops) - 1]:
            value = start
            for step in ops[:at]:
                value = self._apply(step, value)
            bad = self._slip(self._apply(ops[at], value), rng)
            if final(at, bad) != correct:
                return at, bad
        return len(ops) - 1, bad

    @staticmethod
    def _apply(step, value: int) -> int:
        k = step.operands[0]
        return {"add": value + k, "sub": value - k, "mul": value * k, "div": value // k if k else value,
                "boxes": value + step.operands[0] * step.operands[-1]}[step.op]

    def _self_check(self, ops, final: int, start: int, wrong_at: int, rng: random.Random) -> str:
        """Work backwards from the final total; a wrong trace 'checks' its own numbers, as models do."""
        if wrong_at >= 0 or rng.random() < 0.5:
            return f"Let me double-check the last step once more. Yes, {final} looks right."
        back = final
        parts = []
        for step in reversed(ops):
            operand = step.operands[0] * (step.operands[-1] if step.op == "boxes" else 1)
            inverse = {"add": "-", "boxes": "-", "sub": "+", "mul": "/", "div": "*"}[step.op]
            prev = {"-": back - operand, "+": back + operand, "/": back // operand if operand else back, "*": back * operand}[inverse]
            parts.append(f"{back} {inverse} {operand} = {prev}")
            back = prev
        verdict = "which matches the start" if back == start else f"but the start was {start}, so I should look again"
        return f"Let me verify by going backwards: {', '.join(parts)}, {verdict}."

    def _expression(self, expr: str, rng: random.Random) -> tuple[str, str]:
        try:
            tree = ast.parse(expr.strip(), mode="eval")
            value = _eval(tree.body)
        except (SyntaxError, ValueError, KeyError):
            return f"{rng.choice(OPENERS)} The expression {expr!r} does not parse.", "I cannot evaluate it."
        if rng.random() < self.wrong_rate:
            value = self._slip(value, rng)
        reasoning = (f"{rng.choice(OPENERS)} I need to evaluate {expr.strip()}. {rng.choice(HESITATIONS)} "
                     f"Multiplication comes before addition and subtraction. Computing it gives {value}. "
                     f"Let me double-check... yes, {value}.")
        return reasoning, f"The answer is \\boxed{{{value}}}."


def _eval(node) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    raise ValueError("unsupported expression")
