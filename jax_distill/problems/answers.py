"""Final-answer extraction and checking.

Extraction looks, in order, for the last `\\boxed{...}`, the last "the answer is X" / "final answer: X",
then the final line; text after a closing `</think>` is searched before the whole text. Checking uses
exact letter match for multiple choice and math-verify for numbers and LaTeX. math-verify's own
timeouts rely on `signal.alarm` (broken in threads), so checks run in a process pool and each item gets
a wall-clock limit: a pathological answer is reported as None (unverified) and its worker is replaced,
it never hangs the run. Plain decimal numbers are compared exactly without the pool (the common case).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing as mp
import re
from fractions import Fraction
from typing import Sequence

ANSWER_TYPES = ("number", "latex", "choice")

_ANSWER_IS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*(?:is)?\s*[:=]?|answer\s*:)\s*(.+)", re.IGNORECASE
)
# A number as written in an answer: a LaTeX fraction, a power, scientific notation, or a decimal with
# optional thousands separators and an optional "/q" (one alternation, so each numeral is one match). A
# minus sign counts when nothing word-like precedes it ("7-3" is 7 and 3, "COVID-19" is 19) and may
# stand before a currency sign ("-\$5", "-$5").
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMERAL = re.compile(
    rf"(?P<sign>(?<![\w)}}])-\s*(?:\\?\$\s*)?)?(?:"
    rf"\\[dt]?frac\s*\{{\s*(?P<num>-?(?:{_DECIMAL}))\s*\}}\s*\{{\s*(?P<den>-?(?:{_DECIMAL}))\s*\}}"
    rf"|\\[dt]?frac\s*(?P<num1>\d)(?P<den1>\d)"  # \frac12
    rf"|(?P<mant>{_DECIMAL})\s*(?:\\times|\\cdot|×)\s*10\s*\^\s*(?:\{{\s*(?P<exp10>-?\d+)\s*\}}|(?P<exp10_1>\d))"
    rf"|(?P<base>{_DECIMAL})\s*\^\s*(?:\{{\s*(?P<exp>-?\d+)\s*\}}|(?P<exp1>\d))"
    rf"|(?P<p>{_DECIMAL})(?:\s*/\s*(?P<q>\d+))?"
    rf")"
)
_LATEX_SPACING = re.compile(r"\\[,!;: ]|\{,\}")  # thin spaces and {,} thousands separators
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CLAUSE_END = re.compile(r"\.(?:\s|$)|[;\n]")  # a sentence ends at ". ", ";" or a line break
_CHOICE = re.compile(r"^\(?\s*([A-J])\s*\)?(?:[.:)\s]|$)")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _clean(answer: str) -> str:
    answer = answer.strip()
    if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
        answer = answer.strip("$").strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    return answer.rstrip(".").strip()


def _numeral_value(m: re.Match) -> Fraction | None:
    g = m.groupdict()
    dec = lambda x: Fraction(x.replace(",", ""))  # noqa: E731
    try:
        if g["num"] is not None:
            value = dec(g["num"]) / dec(g["den"])
        elif g["num1"] is not None:
            value = Fraction(int(g["num1"]), int(g["den1"]))
        elif g["mant"] is not None or g["base"] is not None:
            exp = int(next(g[k] for k in ("exp10", "exp10_1", "exp", "exp1") if g[k] is not None))
            if abs(exp) > 64:  # not a numeral anyone writes as an answer; leave it to math-verify
                return None
            value = dec(g["mant"]) * Fraction(10) ** exp if g["mant"] is not None else dec(g["base"]) ** exp
        else:
            value = dec(g["p"]) / (int(g["q"]) if g["q"] else 1)
    except ZeroDivisionError:
        return None
    return -value if g["sign"] else value


def _is_proper_fraction(m: re.Match, value: Fraction) -> bool:
    g = m.groupdict()
    written = g["num"] is not None or g["num1"] is not None or g["q"] is not None
    return written and not g["sign"] and 0 < value < 1


def _numerals(text: str) -> list[tuple[Fraction, str, int, int]]:
    """(value, as written, start, end) of every numeral in `text`; a whole number directly followed by a
    proper fraction is one mixed number ("3 1/2", "3\\frac{1}{2}" -> 7/2)."""
    found = [(m, v) for m in _NUMERAL.finditer(text) if (v := _numeral_value(m)) is not None]
    out: list[tuple[Fraction, str, int, int]] = []
    i = 0
    while i < len(found):
        m, value = found[i]
        start, end = m.span()
        if i + 1 < len(found) and value.denominator == 1 and m.group("p") is not None and m.group("q") is None:
            m2, frac = found[i + 1]
            gap = text[end : m2.start()]
            if _is_proper_fraction(m2, frac) and (gap.strip() == "" and (gap or m2.group(0).startswith("\\"))):
                value = value - frac if value < 0 else value + frac
                out.append((value, text[start : m2.end()], start, m2.end()))
                i += 2
                continue
        out.append((value, m.group(0), start, end))
        i += 1
    return out


def _format_number(value: Fraction, written: str) -> str:
    """An integer as digits; a decimal as written (exact compare); any other rational as p/q."""
    if value.denominator == 1:
        return str(value.numerator)
    plain = written.replace(",", "").replace(" ", "")
    if _PLAIN_NUMBER.fullmatch(plain):
        return plain
    return f"{value.numerator}/{value.denominator}"


def _normal_numerals(candidate: str) -> str:
    return _LATEX_SPACING.sub(lambda m: "," if m.group(0) == "{,}" else "", candidate).replace("\u2212", "-")


def _as_number(candidate: str, which: str = "last") -> str | None:
    """The last numeral of `candidate` (which="last"), or the number it introduces (which="first"), evaluated:
    "\\frac{16}{2}" -> "8", "2^3" -> "8", "1{,}000" -> "1000", "\\dfrac{3}{4}" -> "3/4", "-3.5" -> "-3.5";
    None when there is none. The number a phrase introduces is its first numeral ("12 apples per 2 days"
    -> 12), unless its first clause is a worked equation ("7 - 3 = 4 apples", two numerals before "="),
    whose result after the last "=" is the answer."""
    text = _normal_numerals(candidate)
    if which == "first":
        clause = _CLAUSE_END.split(text, 1)[0]
        if "=" in clause and len(_numerals(clause.split("=", 1)[0])) >= 2:
            after = _numerals(clause.rsplit("=", 1)[1])
            if after:
                return _format_number(after[0][0], after[0][1])
    numerals = _numerals(text)
    if not numerals:
        return None
    value, written, _, _ = numerals[0] if which == "first" else numerals[-1]
    return _format_number(value, written)


def _as_choice(candidate: str) -> str | None:
    candidate = candidate.strip().strip("*").strip()
    if candidate.startswith("\\text{") and candidate.endswith("}"):
        candidate = candidate[6:-1]
    alone = re.fullmatch(r"\(?([a-jA-J])\)?\.?", candidate)  # "(b)" alone: a letter in any case
    if alone:
        return alone.group(1).upper()
    m = _CHOICE.match(candidate)
    return m.group(1).upper() if m else None


def _extract(text: str, answer_type: str) -> str | None:
    convert = {"number": _as_number, "choice": _as_choice, "latex": lambda s: _clean(s) or None}[answer_type]
    boxed = last_boxed(text)
    if boxed is not None:
        # a box holds the answer first: \boxed{12 \text{ apples per } 2 \text{ days}} is 12
        got = _as_number(boxed, "first") if answer_type == "number" else convert(boxed)
        if got is not None:
            return got
    phrases = _ANSWER_IS.findall(text)
    if phrases:
        phrase = phrases[-1].strip()
        if answer_type == "latex":
            phrase = phrase.split("\n")[0]
        # "the final answer is 12 apples per 2 days": the number the phrase introduces, not the last one
        got = _as_number(_clean(phrase), "first") if answer_type == "number" else convert(_clean(phrase))
        if got is not None:
            return got
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    final = lines[-1]
    if answer_type == "latex":
        final = final.split("=")[-1]  # "x = \frac{1}{2}" -> "\frac{1}{2}"
    return convert(_clean(final))


def extract_answer(text: str, answer_type: str) -> str | None:
    """The final answer in `text` as a string ("42", "\\frac{1}{2}", "B"), or None when none is found."""
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    if not text:
        return None
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        got = _extract(after, answer_type)
        if got is not None:
            return got
        text = text.rsplit("</think>", 1)[0]
    return _extract(text, answer_type)


# ----------------------------------------------------------------------------- checking


def _exact_number(pred: str, gold: str) -> bool | None:
    """Exact comparison of plain decimals (no pool needed); None when either is not a plain number."""
    p, g = pred.replace(",", "").strip(), gold.replace(",", "").strip()
    if _PLAIN_NUMBER.fullmatch(p) and _PLAIN_NUMBER.fullmatch(g):
        return Fraction(p) == Fraction(g)
    return None


def _verify_worker(pred: str, gold: str) -> bool:
    """Runs in a pool process (main thread), without math-verify's signal timeouts: the pool bounds time."""
    from math_verify import parse, verify

    gold_parsed = parse(_wrap(gold), parsing_timeout=None)
    pred_parsed = parse(_wrap(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _wrap(answer: str) -> str:
    """math-verify finds LaTeX inside $...$ or \\boxed{}; bare answers are wrapped so they parse as math."""
    s = answer.strip()
    if "\\boxed" in s or s.startswith("$"):
        return s
    return f"${s}$"


def _warm() -> None:
    """Import math-verify and run one check per worker (first use costs seconds), quietly."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _verify_worker("1/2", "0.5")


def _noop() -> None:
    return None


class Verifier:
    """A small process pool for math-verify with a per-item wall-clock timeout.

    A timed-out item yields None; the whole pool is then replaced (a stuck worker cannot be reclaimed)
    and the items still pending are resubmitted, so one pathological answer costs one timeout.
    """

    def __init__(self, workers: int = 2, startup_timeout_s: float = 300.0):
        self.workers = workers
        self.startup_timeout_s = startup_timeout_s
        self._pool: cf.ProcessPoolExecutor | None = None

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_warm)
            # Wait for the workers' start-up (imports, first parse) so per-item timeouts measure checks only.
            for fut in [self._pool.submit(_noop) for _ in range(self.workers)]:
                fut.result(timeout=self.startup_timeout_s)
        return self._pool

    def _kill(self) -> None:
        if self._pool is None:
            return
        for proc in list(getattr(self._pool, "_processes", {}).values()):
            proc.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def check(self, items: Sequence[tuple[str, str]], timeout_s: float) -> list[bool | None]:
        results: list[bool | None] = [None] * len(items)
        pending = list(range(len(items)))
        while pending:
            pool = self._executor()
            futures = {i: pool.submit(_verify_worker, *items[i]) for i in pending}
            pending = []
            timed_out = False
            for i, fut in futures.items():
                if timed_out:  # pool is being replaced: resubmit what has not finished yet
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        results[i] = fut.result()
                    else:
                        pending.append(i)
                    continue
                try:
                    results[i] = fut.result(timeout=timeout_s)
                except cf.TimeoutError:
                    results[i] = None
                    timed_out = True
                except Exception:  # noqa: BLE001  (a crashing parse counts as "not verified")
                    results[i] = None
                    if isinstance(fut.exception(), cf.process.BrokenProcessPool):
                        timed_out = True
            if timed_out:
                self._kill()
        return results


_VERIFIER: Verifier | None = None


def _default_verifier() -> Verifier:
    global _VERIFIER
    if _VERIFIER is None:
        _VERIFIER = Verifier()
        atexit.register(_VERIFIER.close)
    return _VERIFIER


def check_answers(pairs: Sequence[tuple], timeout_s: float = 5.0) -> list[bool | None]:
    """Check (predicted, gold[, answer_type]) triples; answer_type defaults to "latex" (math-verify).

    Returns True/False per item, or None when the check timed out or crashed (unverified). A predicted
    answer of None (nothing extracted) is False. Letters compare exactly, plain decimals exactly, the
    rest through math-verify in a process pool with `timeout_s` per item.
    """
    out: list[bool | None] = [None] * len(pairs)
    slow: list[tuple[int, str, str]] = []
    for i, pair in enumerate(pairs):
        pred, gold, answer_type = (tuple(pair) + ("latex",))[:3]
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"check_answers item {i}: answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
        if pred is None or not str(pred).strip():
            out[i] = False
            continue
        pred, gold = str(pred).strip(), str(gold).strip()
        if answer_type == "choice":
            out[i] = _as_choice(pred) == _as_choice(gold) and _as_choice(gold) is not None
            continue
        exact = _exact_number(pred, gold)
        if exact is True or (exact is False and answer_type == "number"):
            out[i] = exact
            continue
        if pred == gold:
            out[i] = True
            continue
        slow.append((i, pred, gold))
    if slow:
        checked = _default_verifier().check([(p, g) for _, p, g in slow], timeout_s)
        for (i, _, _), ok in zip(slow, checked):
            out[i] = ok
    return out
