"""n-gram decontamination of training questions against evaluation questions (as open-r1 does it).

Questions are lower-cased and split into word tokens (numbers kept: "has 5 apples" and "has 6 apples"
differ); a training question sharing any word n-gram with an evaluation question is removed. Questions
shorter than n words are compared whole. Datasets in `exact_only` (the synthetic problems, whose
templates share n-grams by design) are only removed when their normalized text equals an evaluation
question. The report lists every removal with the n-gram that matched.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _normal(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def decontaminate(train: list, evals: list, n: int = 8, exact_only: frozenset = frozenset(), max_examples: int = 50):
    """(kept train problems, report). `n <= 0` disables it (report says so)."""
    if n <= 0:
        return list(train), {"ngram": n, "enabled": False, "removed": 0}
    index: dict[tuple[str, ...], str] = {}
    whole = {_normal(p.question): p.id for p in evals}
    for p in evals:
        for g in ngrams(p.question, n):
            index.setdefault(g, p.id)
    kept, removed, per_dataset = [], [], Counter()
    for p in train:
        if p.dataset in exact_only:
            text = _normal(p.question)
            hit = text if text in whole else None
            if hit is not None:
                index.setdefault(hit, whole[hit])
        else:
            hit = next((g for g in ngrams(p.question, n) if g in index), None)
        if hit is None:
            kept.append(p)
        else:
            per_dataset[p.dataset] += 1
            removed.append({"train_id": p.id, "eval_id": index[hit], "ngram": " ".join(hit)})
    report = {
        "ngram": n,
        "enabled": True,
        "exact_only": sorted(exact_only),
        "train_before": len(train),
        "eval_questions": len(evals),
        "removed": len(removed),
        "removed_per_dataset": dict(per_dataset),
        "examples": removed[:max_examples],
    }
    return kept, report
