"""Built-in training data, so a config can train on its own: `python -m jax_distill.train --config
configs/train/tiny.py` with no data, tokenizer or model.

With data.path empty and data.builtin_problems = N > 0, the trace stage itself (traces.generate on its
default config: built-in arithmetic problems, the procedural teacher) writes one sample for each of N of
the easiest problems (one operation on numbers below 10, terse traces: the demo's setting, short enough
for a tiny seq_len) into <run_dir>/builtin/traces, resumable as that stage is. A random-init student with
no tokenizer gets one trained on those traces' text as the demo builds it (models.tiny.train_tokenizer,
vocabulary model.hf.vocab_size) in <run_dir>/builtin/tokenizer, kept for reruns.
"""

from __future__ import annotations

import os
import shutil

from ml_collections import ConfigDict


def wanted(c: ConfigDict) -> bool:
    return not c.data.path and c.data.builtin_problems > 0


def prepare(c: ConfigDict, make: bool = True) -> None:
    """Make the built-in traces (and tokenizer) under c.train.run_dir and point c.data.path (and
    c.train.tokenizer) at them. With several hosts one makes them (`make`) while the others wait at the
    barrier that follows, then only point at them."""
    from jax_distill.parallel import distributed

    folder = os.path.join(c.train.run_dir, "builtin")
    traces = os.path.join(folder, "traces")
    tokenizer = os.path.join(folder, "tokenizer")
    needs_tokenizer = not c.model.path and not c.train.tokenizer
    if make:
        _traces(traces, c.data.builtin_problems)
        if needs_tokenizer:
            _tokenizer(traces, tokenizer, c.model.hf.vocab_size)
    distributed.barrier("built-in training data")
    c.data.path = (traces,)
    if needs_tokenizer:
        c.train.tokenizer = tokenizer


def _traces(out_dir: str, problems: int) -> None:
    from jax_distill.traces import generate

    g = generate.default_config()
    g.out_dir = out_dir
    g.problems.synthetic.num = problems
    g.problems.synthetic.steps = 1
    g.problems.synthetic.max_value = 9
    g.problems.synthetic.ops = ("add", "sub")
    g.engine.kind = "procedural"
    g.engine.procedural.verbosity = 0
    g.sampling.n = 1
    generate.run(g)


def _tokenizer(traces: str, folder: str, vocab_size: int) -> None:
    """A BPE tokenizer trained on the traces' text in `folder` (published whole by a rename; reused)."""
    from jax_distill.models.tiny import train_tokenizer
    from jax_distill.traces.store import read_records

    if not os.path.isdir(folder):
        partial = folder + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        texts = (t for r in read_records(traces) for t in (r["question"], r["trace"], r["answer"]))
        train_tokenizer(texts, partial, vocab_size=vocab_size)
        os.replace(partial, folder)
