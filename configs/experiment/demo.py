"""The embedded default: the whole study in miniature on a CPU with no model hub, in minutes.

  python -m jax_distill.experiment --config configs/experiment/demo.py

Built-in arithmetic word problems; the procedural teacher (a documented stand-in for a reasoning model)
writes verbose traces with occasional wrong answers that verification removes; two model-free
compressor (extractive: keeps the computations and the conclusion); a tiny Qwen3 student built from the traces' own text (BPE tokenizer + random init), trained
by full fine-tuning and LoRA on raw, compressed, length-matched truncated and answer-only traces; greedy
evaluation on held-out problems with our JAX sampler; the paper's table printed at the end.
"""

from pathlib import Path

from ml_collections import ConfigDict

from jax_distill.cli import config_file
from jax_distill.experiment import default_config

CONFIGS = Path(__file__).resolve().parent.parent


def get_config() -> ConfigDict:
    c = default_config()
    c.workdir = "runs/demo"
    c.problems.synthetic.num = 600
    c.problems.synthetic.steps = 1
    c.problems.synthetic.max_value = 9
    c.problems.synthetic.ops = ("add", "sub")
    c.problems.eval_fraction = 0.1
    c.problems.eval_limit = 48

    teacher = config_file(f"{CONFIGS}/traces/generate.py:procedural")
    teacher.sampling.n = 1
    c.teachers = ConfigDict({"procedural": teacher})

    c.compressors = ConfigDict({"extractive": config_file(f"{CONFIGS}/traces/compress.py:extractive")})
    c.truncate = config_file(f"{CONFIGS}/traces/truncate.py")

    c.students = ConfigDict({
        "tiny-qwen3": ConfigDict(dict(
            path="",  # "" = build one here from the traces' text
            tiny=dict(family="qwen3", vocab_size=384, hidden_size=128, intermediate_size=352, num_layers=3,
                      num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=1024, seed=0),
        )),
    })
    c.methods = ("full",)
    c.variants = ("raw", "compressed:extractive", "truncated:extractive", "answer_only")

    t = config_file(f"{CONFIGS}/train/tiny.py")
    t.model.compute_dtype = "float32"
    t.model.param_dtype = "float32"
    t.optim.name = "adamw"
    t.optim.lr = 3e-3
    t.optim.warmup_frac = 0.05
    t.train.seq_len = 512
    t.train.batch_size = 4  # small batches: a from-scratch student needs optimizer steps more than width
    t.train.steps = 0  # data.num_epochs passes over each variant's traces
    t.data.num_epochs = 3
    t.train.log_every = 20
    t.checkpoint.every = 100
    t.export.dtype = "float32"
    t.export.peft = False
    t.data.read_threads = 1
    c.train = t
    c.method_overrides = ConfigDict({
        "lora": ConfigDict(dict(optim=dict(lr=3e-3), lora=dict(rank=16, alpha=32.0, dropout=0.0))),
        "full": ConfigDict(dict(optim=dict(lr=3e-3))),
    })

    e = config_file(f"{CONFIGS}/eval/default.py")
    e.dtype = "float32"
    e.generation.sampling.max_tokens = 320
    e.generation.batch_size = 64
    e.multiple_choice.tasks = ()
    c.eval = e
    c.report = config_file(f"{CONFIGS}/eval/report.py")
    return c
