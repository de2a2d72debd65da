"""The one record every problem source produces and every stage consumes (its own module, so sources,
the synthetic generator and the stages import it without a cycle through the package)."""

from __future__ import annotations

import dataclasses

from jax_distill.problems.answers import ANSWER_TYPES


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
