"""train.budget: how many optimizer updates a run gets. Under `examples` a raw variant and its 5x shorter
compressed twin take the same number of steps per epoch; under `tokens` the steps follow the tokens."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hf_tiny import load_tokenizer, tokenizer_dir

from jax_distill import train
from jax_distill.cli import load_config
from jax_distill.data import DataError, count_batches, make_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "train" / "tiny.py")
N, SEQ_LEN, BATCH = 40, 256, 4


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same 40 questions twice: long raw traces and short compressed ones."""
    d = tmp_path_factory.mktemp("twins")
    rng = np.random.default_rng(0)
    raw, comp = [], []
    for i in range(N):
        a, b = (int(x) for x in rng.integers(1, 50, size=2))
        detours = " ".join(f"Wait, let me check {a} + {k} = {a + k} again." for k in range(1, 7 + i % 4))
        q, ans = f"What is {a} + {b}?", f"The answer is {a + b}."
        raw.append({"id": f"q{i}/s0", "question": q, "trace": f"Let me think. {detours} So {a} + {b} = {a + b}.",
                    "answer": ans, "variant": "raw"})
        comp.append({"id": f"q{i}/s0/compressed", "question": q, "trace": f"{a} + {b} = {a + b}.", "answer": ans,
                     "variant": "compressed"})
    for name, rows in (("raw", raw), ("comp", comp)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "raw.jsonl", d / "comp.jsonl"


def steps_of(path, budget, **extra):
    """The optimizer steps of one epoch as the training entry point counts them (and the data stats)."""
    cfg = load_config(TINY, {"data.path": str(path), "train.tokenizer": str(tokenizer_dir()), "train.run_dir": "x",
                             "train.budget": budget, "train.steps": 0, "data.num_epochs": 1,
                             "train.seq_len": SEQ_LEN, "train.batch_size": BATCH, **extra})
    c = train._derived(cfg)
    n, stats = count_batches(c.data, load_tokenizer(), seq_len=SEQ_LEN, batch_size=BATCH, seed=0)
    return n, stats, c


def test_examples_budget_gives_raw_and_compressed_twins_the_same_steps(twins):
    raw, comp = twins
    n_raw, s_raw, c = steps_of(raw, "examples")
    n_comp, s_comp, _ = steps_of(comp, "examples")
    assert c.data.examples_per_step == BATCH  # 0 = one example per row: always fits
    assert n_raw == n_comp == math.ceil(N / BATCH) and s_raw.examples == s_comp.examples == N
    assert s_raw.real_tokens > 3 * s_comp.real_tokens  # same steps, far fewer tokens in each
    # more examples than rows: they are packed, and every step holds exactly that many
    n, stats, c = steps_of(comp, "examples", **{"train.examples_per_step": 12})
    assert n == math.ceil(N / 12) and stats.examples == N
    ds, _ = make_dataset(c.data, load_tokenizer(), seq_len=SEQ_LEN, batch_size=BATCH, seed=0)
    per_batch = [int(b["segment_ids"].max(axis=1).sum()) for b in iter(ds)]
    assert per_batch == [12, 12, 12, N - 36]
    with pytest.raises(DataError, match=r"train\.examples_per_step: 12 examples .* do not fit in 4 rows"):
        steps_of(raw, "examples", **{"train.examples_per_step": 12})


def test_tokens_budget_steps_follow_the_tokens(twins):
    raw, comp = twins
    n_raw, s_raw, c = steps_of(raw, "tokens")
    n_comp, s_comp, _ = steps_of(comp, "tokens")
    assert c.data.examples_per_step == 0
    assert n_raw > 2 * n_comp
    # each step is BATCH rows of SEQ_LEN packed tokens: the steps are the tokens over what a step holds
    for n, s in ((n_raw, s_raw), (n_comp, s_comp)):
        assert n == s.batches and n - 1 < s.real_tokens / (BATCH * SEQ_LEN * s.packing_efficiency) <= n + 1e-9
    assert n_raw / n_comp == pytest.approx(s_raw.real_tokens / s_comp.real_tokens, rel=0.35)


def test_budget_fields_are_checked():
    base = {"train.run_dir": "x"}
    with pytest.raises(ValueError, match=r"config\.train\.steps: must be > 0 with train\.budget=steps"):
        from jax_distill.training.config import validate

        validate(load_config(TINY, {**base, "train.steps": 0}))
    with pytest.raises(ValueError, match=r"config\.train\.steps: must be > 0 with train\.budget=steps and 0 otherwise"):
        validate(load_config(TINY, {**base, "train.budget": "examples"}))
    with pytest.raises(ValueError, match=r"config\.train\.budget"):
        validate(load_config(TINY, {**base, "train.budget": "epochs"}))


def test_fit_rows_trains_the_same_updates_on_fewer_rows(twins, tmp_path):
    """Short traces under budget=examples: fit_rows packs each step's examples into the fewest rows that
    hold them, and the run is the same run (the loss is a mean over loss tokens), only cheaper."""
    _, comp = twins
    runs = {}
    for fit in (False, True):
        cfg = load_config(TINY, {"data.path": str(comp), "train.tokenizer": str(tokenizer_dir()),
                                 "train.run_dir": str(tmp_path / str(fit)), "train.budget": "examples",
                                 "train.steps": 0, "data.num_epochs": 2, "train.seq_len": 128,
                                 "train.batch_size": 32, "train.examples_per_step": 8, "train.fit_rows": fit,
                                 "checkpoint.every": 100})
        summary = train.run(cfg)
        losses = [json.loads(line)["loss"] for line in (tmp_path / str(fit) / "metrics.jsonl").read_text().splitlines()]
        runs[fit] = summary, losses
    (plain, plain_losses), (fitted, fitted_losses) = runs[False], runs[True]
    # 8 short examples fit in 2 rows; the 8 CPU devices of the batch axis round that up to 8 of the 32
    assert plain["rows_per_step"] == 32 and fitted["rows_per_step"] == 8
    assert fitted["optimizer_steps"] == plain["optimizer_steps"] == 2 * math.ceil(N / 8)
    assert fitted["examples"] == plain["examples"] == 2 * N
    assert fitted["train_tokens"] == plain["train_tokens"]
    np.testing.assert_allclose(fitted_losses, plain_losses, rtol=2e-5)


def test_fit_rows_needs_the_examples_budget():
    from jax_distill.training.config import validate

    with pytest.raises(ValueError, match=r"config\.train\.fit_rows: needs train\.budget=examples"):
        validate(load_config(TINY, {"train.run_dir": "x", "train.fit_rows": True}))
