"""Questions with known answers: sources, answer extraction/checking, decontamination.

Public API (the evaluation and trace stages import these):
  Problem                      one question with its gold answer and answer type (problems/problem.py)
  extract_answer(text, type)   final answer string found in a completion, or None
  check_answers(pairs, t)      [(pred, gold, type)] -> [True | False | None (timed out / unverified)]
  load_problems(config)        (train, eval) lists, each dataset split by its held_out rule (by id), train
                               decontaminated against every eval question
"""

from jax_distill.problems.answers import ANSWER_TYPES, check_answers, extract_answer
from jax_distill.problems.problem import Problem
from jax_distill.problems.sources import load_problems, load_problems_with_report

__all__ = ["Problem", "ANSWER_TYPES", "extract_answer", "check_answers", "load_problems", "load_problems_with_report"]
