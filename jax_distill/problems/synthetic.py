"""Built-in multi-step arithmetic word problems with exact integer answers (the embedded default source).

Each problem is a start sentence, `steps` operation sentences and a question, drawn from a fixed grammar
so that `solve()` can recover the computation from the text alone (the procedural teacher uses it).
Difficulty knobs: number of steps, operand range, allowed operations. The easiest setting (1 step,
values <= 9, add/sub) is learnable by a tiny student; harder ones chain products and exact divisions.
Generation is deterministic in (seed, index); duplicate questions are redrawn so ids and texts are unique.
"""

from __future__ import annotations

import dataclasses
import random
import re

from jax_distill.problems.problem import Problem

OPS = ("add", "sub", "mul", "div", "boxes")

NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo", "Mia", "Noor", "Omar")
FRIENDS = ("her brother", "a neighbour", "his sister", "a classmate", "a friend", "the teacher")
ITEMS = ("apples", "pears", "marbles", "stickers", "coins", "books", "pencils", "shells", "cards", "plums")
PRONOUN = {name: ("She" if name in ("Ann", "Cara", "Fay", "Hana", "Jo", "Kim", "Mia", "Noor") else "He") for name in NAMES}

# One regex per sentence form: (op, pattern). Operands are the named groups.
_START = re.compile(r"^(?P<name>[A-Z][a-z]+) has (?P<a>\d+) (?P<item>[a-z]+)\.$")
_FORMS = (
    ("add", re.compile(r"^(?:She|He) (?:buys|finds) (?P<k>\d+) more (?P<item>[a-z]+)\.$")),
    ("sub", re.compile(r"^(?:She|He) gives (?P<k>\d+) (?P<item>[a-z]+) to [a-z ]+\.$")),
    ("boxes", re.compile(r"^(?:She|He) buys (?P<k>\d+) boxes with (?P<m>\d+) (?P<item>[a-z]+) in each\.$")),
    ("mul", re.compile(r"^Then the number of (?P<item>[a-z]+) becomes (?P<k>\d+) times as large\.$")),
    ("div", re.compile(r"^(?:She|He) splits the (?P<item>[a-z]+) into (?P<k>\d+) equal groups and keeps one group\.$")),
)
_QUESTION = re.compile(r"^How many (?P<item>[a-z]+) does (?P<name>[A-Z][a-z]+) have now\?$")


@dataclasses.dataclass(frozen=True)
class Step:
    """One operation: `before op operand = after` (boxes: operand = k * m, with k and m kept for wording)."""

    op: str
    sentence: str
    operands: tuple[int, ...]
    before: int
    after: int


def _sentence(op: str, pron: str, item: str, rng: random.Random, k: int, m: int = 0) -> str:
    if op == "add":
        return f"{pron} {rng.choice(('buys', 'finds'))} {k} more {item}."
    if op == "sub":
        return f"{pron} gives {k} {item} to {rng.choice(FRIENDS)}."
    if op == "boxes":
        return f"{pron} buys {k} boxes with {m} {item} in each."
    if op == "mul":
        return f"Then the number of {item} becomes {k} times as large."
    return f"{pron} splits the {item} into {k} equal groups and keeps one group."


def _draw(rng: random.Random, steps: int, max_value: int, ops: tuple[str, ...]) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pron = PRONOUN[name]
    value = rng.randint(2, max(2, max_value))
    sentences = [f"{name} has {value} {item}."]
    cap = max_value * max_value  # keeps intermediate values printable and small
    for _ in range(steps):
        choices = list(ops)
        rng.shuffle(choices)
        for op in choices:
            if op == "add":
                k = rng.randint(1, max_value)
                new = value + k
            elif op == "sub":
                if value < 2:
                    continue
                k = rng.randint(1, min(max_value, value - 1))
                new = value - k
            elif op == "boxes":
                k, m = rng.randint(2, max(2, min(9, max_value))), rng.randint(2, max(2, max_value))
                new = value + k * m
            elif op == "mul":
                k = rng.randint(2, 3)
                new = value * k
            else:  # div
                divisors = [d for d in range(2, min(9, value) + 1) if value % d == 0 and value // d >= 1]
                if not divisors:
                    continue
                k = rng.choice(divisors)
                new = value // k
            if new > cap:
                continue
            sentences.append(_sentence(op, pron, item, rng, k, m if op == "boxes" else 0))
            value = new
            break
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences)


def generate(num: int, seed: int = 0, steps: int = 2, max_value: int = 20, ops: tuple[str, ...] = OPS,
             dataset: str = "arith") -> list[Problem]:
    """`num` unique problems; id = f"{dataset}-{seed}-{index:06d}", gold = the exact integer answer."""
    unknown = set(ops) - set(OPS)
    if isinstance(ops, str) or unknown or not ops:
        raise ValueError(f"synthetic ops must be a non-empty subset of {OPS}, got {ops!r}")
    if steps < 1 or max_value < 2:
        raise ValueError(f"synthetic steps must be >= 1 and max_value >= 2, got {steps}, {max_value}")
    seen: set[str] = set()
    out = []
    for index in range(num):
        rng = random.Random(f"{dataset}:{seed}:{index}")
        for _ in range(1000):
            question = _draw(rng, steps, max_value, tuple(ops))
            if question not in seen:
                break
        else:
            raise ValueError(f"synthetic: cannot draw {num} unique problems with steps={steps}, max_value={max_value}")
        seen.add(question)
        answer = solve(question)[-1].after
        out.append(Problem(id=f"{dataset}-{seed}-{index:06d}", dataset=dataset, question=question, gold=str(answer),
                           answer_type="number"))
    return out


def split_sentences(question: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.?])\s+", question.strip()) if s]


def solve(question: str) -> list[Step] | None:
    """Recover the computation of a generated question; None if the text is not from this grammar."""
    sentences = split_sentences(question)
    if len(sentences) < 2:
        return None
    start, query = _START.match(sentences[0]), _QUESTION.match(sentences[-1])
    if not start or not query:
        return None
    value = int(start["a"])
    steps = [Step("start", sentences[0], (value,), 0, value)]
    for sentence in sentences[1:-1]:
        for op, pattern in _FORMS:
            m = pattern.match(sentence)
            if m:
                break
        else:
            return None
        k = int(m["k"])
        if op == "add":
            new, operands = value + k, (k,)
        elif op == "sub":
            new, operands = value - k, (k,)
        elif op == "boxes":
            new, operands = value + k * int(m["m"]), (k, int(m["m"]))
        elif op == "mul":
            new, operands = value * k, (k,)
        else:
            if k == 0 or value % k:
                return None
            new, operands = value // k, (k,)
        steps.append(Step(op, sentence, operands, value, new))
        value = new
    return steps
