"""Questions with known answers: sources, answer extraction/checking, decontamination.

Public API (the evaluation and trace stages import these):
  Problem                      one question with its gold answer and answer type
  extract_answer(text, type)   final answer string found in a completion, or None
  check_answers(pairs, t)      [(pred, gold, type)] -> [True | False | None (timed out / unverified)]
  load_problems(config)        (train, eval) lists, deterministic split by id, train decontaminated
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Problem:
    """A question and its gold answer. `answer_type`: "number" | "latex" | "choice" (gold is a letter,
    `choices` the option texts in letter order; the question text already lists them)."""

    id: str
    dataset: str
    question: str
    gold: str
    answer_type: str = "number"
    choices: tuple[str, ...] = ()

    def __post_init__(self):
        from jax_distill.problems.answers import ANSWER_TYPES

        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"problem {self.id!r}: answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["choices"] = list(self.choices)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(d["id"], d["dataset"], d["question"], str(d["gold"]), d.get("answer_type", "number"),
                   tuple(d.get("choices", ())))


from jax_distill.problems.answers import ANSWER_TYPES, check_answers, extract_answer  # noqa: E402
from jax_distill.problems.sources import load_problems, load_problems_with_report  # noqa: E402

__all__ = ["Problem", "ANSWER_TYPES", "extract_answer", "check_answers", "load_problems", "load_problems_with_report"]
