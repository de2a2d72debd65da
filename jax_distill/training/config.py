"""The training config: every field once, with its meaning, and the one `validate` that checks them.

Sections: meta (labels for reports), model, method + lora (declared by training.lora.LoRAConfig), optim,
train, mesh, checkpoint, export, data (declared and checked by jax_distill.data). Config files under
configs/train/ start from `default_config()`; `validate` names the first bad field before any work.
"""

from __future__ import annotations

import os
import re

from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.training.lora import LoRAConfig

METHODS = ("lora", "full")
REMAT = ("none", "full", "dots")
OPTIMIZERS = ("adamw", "adamw_8bit")
DTYPES = ("float32", "bfloat16", "float16")
NONFINITE = ("stop", "skip")
BUDGETS = ("examples", "tokens", "steps")
MESH_AXES = ("data", "fsdp", "tensor")


def tiny_model() -> ConfigDict:
    """Hugging Face config fields of a tiny random student (model.path empty)."""
    return ConfigDict(
        dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=512,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            max_position_embeddings=2048,
        )
    )


def default_config() -> ConfigDict:
    from jax_distill.data import data_config

    c = ConfigDict()
    c.meta = ConfigDict()
    c.meta.name = ""  # run label
    c.meta.teacher = ""  # e.g. qwen3.5-397b | gpt-oss-120b (the report groups runs by these)
    c.meta.student = ""  # "" = the student folder's name
    c.meta.variant = ""  # raw | compressed-llama | compressed-ministral | answer-only | truncated-...

    c.model = ConfigDict()
    c.model.path = ""  # HF folder, local or gs://; "" = random init from model.hf (tests, demo)
    c.model.hf = tiny_model()  # config.json fields used only when model.path is ""
    c.model.param_dtype = "float32"  # master weights (and LoRA adapters: always fp32)
    c.model.compute_dtype = "bfloat16"  # activations / matmuls
    c.model.remat = "none"  # activation checkpointing: none | full | dots
    c.model.seed = 0  # random init of model.hf students

    c.method = "lora"  # lora | full
    c.lora = LoRAConfig.as_config()  # rank, alpha, dropout, targets: see LoRAConfig

    c.optim = ConfigDict()
    c.optim.name = "adamw_8bit"  # adamw | adamw_8bit (block-quantized moments, as the paper)
    c.optim.lr = 1e-4  # peak learning rate
    c.optim.warmup_frac = 0.1  # linear warmup over this fraction of the steps, then cosine
    c.optim.final_lr_frac = 0.0  # cosine ends at final_lr_frac * lr
    c.optim.b1 = 0.9  # Adam first-moment decay
    c.optim.b2 = 0.999  # Adam second-moment decay
    c.optim.eps = 1e-8  # Adam denominator epsilon
    c.optim.weight_decay = 0.0  # decoupled (AdamW) weight decay
    c.optim.clip_norm = 1.0  # global-norm gradient clipping; 0 = off
    c.optim.min_8bit_size = 4096  # adamw_8bit keeps smaller tensors' moments in fp32

    c.train = ConfigDict()
    c.train.run_dir = ""  # local: metrics.jsonl, tensorboard/, train_*.json, export/; "" = runs/train/<meta.name>
    c.train.tokenizer = ""  # tokenizer folder; "" = model.path
    c.train.seq_len = 16384  # tokens per packed row
    c.train.batch_size = 64  # global sequences per optimizer step (split over hosts and devices)
    c.train.grad_accum = 1  # microbatches per step (scan); batch_size must divide by it
    # the data split into this many shards (records i, i+n, ...), each shuffled and packed on its own into
    # batch_size / n rows of every batch, hosts reading equal runs of them; 0 = one per host. The batches
    # depend on this, not on the host count: 1 host or n hosts with the same value train the same run
    c.train.data_shards = 0
    c.train.loss_chunk = 2048  # sequence chunk for vocab projection + cross-entropy (memory); 0 = whole row
    # How many optimizer updates a run gets, an explicit choice because it decides what a comparison of trace
    # variants measures:
    #   examples  every step takes train.examples_per_step examples (packed into batch_size rows), so each
    #             epoch has the same number of steps for raw, compressed, truncated and answer-only traces
    #             of the same questions: variants differ in what they read, not in how often the weights move
    #   tokens    every step is batch_size rows of seq_len packed tokens (a compute-matched comparison): a
    #             variant with 5x shorter traces gets ~5x fewer steps under the same schedule
    #   steps     train.steps, whatever the data (data.num_epochs 0 repeats it)
    # Default examples: the paper's recipe is "one epoch" per run, with no token budget, i.e. one pass over
    # the same examples per variant at a fixed batch of examples, which is what examples gives. Steps of
    # equal shape cost the same, so under examples a shorter variant trains no faster unless
    # train.fit_rows shrinks its steps to the rows its examples fill (else the report's training speedup
    # reflects padding: compare train tokens instead, or budget tokens for time).
    c.train.budget = "examples"
    c.train.examples_per_step = 0  # budget examples: examples per optimizer step (global); 0 = batch_size
    # budget examples: each step as few rows as hold its examples (counted over every epoch at start,
    # at most batch_size), so shorter variants take the same updates for less compute (the loss is a mean
    # over loss tokens: padding rows change nothing else); train_summary.json records the rows
    c.train.fit_rows = False
    c.train.steps = 0  # budget steps: the number of optimizer steps (> 0); else 0 (counted at start)
    c.train.seed = 0  # data order, LoRA init, dropout
    c.train.log_every = 10  # progress line every N steps (metrics.jsonl gets every step)
    c.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = from the device kind
    # a step with a non-finite loss, gradient norm or update: stop (fail naming the step and the last
    # checkpoint) | skip (drop that update inside the step, fail once more than max_skipped_steps are dropped)
    c.train.nonfinite = "stop"
    c.train.max_skipped_steps = 10  # skip mode: dropped updates tolerated in one run of the command

    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # device mesh; one size may be -1 = the rest

    c.checkpoint = ConfigDict()
    c.checkpoint.dir = ""  # local or gs://bucket/path; "" = <run_dir>/checkpoints
    c.checkpoint.every = 500  # async save every N steps (also at the end and on SIGTERM); 0 = end only
    c.checkpoint.keep = 3  # keep the last K
    c.checkpoint.async_save = True  # write arrays while training continues

    c.export = ConfigDict()
    c.export.dir = ""  # "" = <run_dir>/export; hf/ (LoRA merged) and peft/ (LoRA mode)
    c.export.hf = True  # a Hugging Face folder with the adapters merged
    c.export.peft = True  # LoRA mode: also a PEFT adapter folder
    c.export.dtype = "bfloat16"  # dtype of the exported weights

    c.data = data_config()
    return c


def validate(c: ConfigDict) -> None:
    """Every field's type, range and choice, and the local paths that must exist, each error naming its
    field (checks.ConfigError, a ValueError); the data section through jax_distill.data.validate."""
    from jax_distill.data import validate as validate_data

    checks.one_of(c, "method", METHODS)
    for field in ("meta.name", "meta.teacher", "meta.student", "meta.variant"):
        checks.is_type(c, field, str)

    checks.exists(c, "model.path", what="HF folder", allow_empty=True)
    checks.is_type(c, "model.hf", ConfigDict)
    checks.one_of(c, "model.param_dtype", DTYPES)
    checks.one_of(c, "model.compute_dtype", DTYPES)
    checks.one_of(c, "model.remat", REMAT)
    _count(c, "model.seed", 0)

    if c.method == "lora":
        _count(c, "lora.rank", 1)
        checks.positive(c, "lora.alpha")
        checks.in_range(c, "lora.dropout", 0.0, 1.0)
        checks.is_type(c, "lora.targets", str)
        try:
            re.compile(c.lora.targets)
        except re.error as e:
            checks.need(False, "lora.targets", f"not a regular expression ({e}): {c.lora.targets!r}")

    checks.one_of(c, "optim.name", OPTIMIZERS)
    checks.positive(c, "optim.lr")
    checks.in_range(c, "optim.warmup_frac", 0.0, 1.0)
    checks.in_range(c, "optim.final_lr_frac", 0.0, 1.0, closed=True)
    checks.in_range(c, "optim.b1", 0.0, 1.0)
    checks.in_range(c, "optim.b2", 0.0, 1.0)
    checks.positive(c, "optim.eps")
    checks.at_least(c, "optim.weight_decay", 0.0)
    checks.at_least(c, "optim.clip_norm", 0.0)
    _count(c, "optim.min_8bit_size", 0)

    t = c.train
    checks.is_type(c, "train.run_dir", str)
    checks.need(bool(t.run_dir or c.meta.name), "train.run_dir",
                "must be set, or meta.name (metrics, summary and exports go there; default runs/train/<meta.name>)")
    checks.need(bool(c.model.path or t.tokenizer or (not c.data.path and c.data.builtin_problems)), "train.tokenizer",
                "needed when model.path is empty (and the data is not the built-in one, which brings its own)")
    checks.exists(c, "train.tokenizer", what="tokenizer folder", allow_empty=True)
    _count(c, "train.seq_len", 2)
    _count(c, "train.batch_size", 1)
    _count(c, "train.grad_accum", 1)
    checks.need(t.batch_size % t.grad_accum == 0, "train.grad_accum", f"must divide train.batch_size ({t.batch_size})")
    _count(c, "train.data_shards", 0)
    checks.need(t.data_shards == 0 or t.batch_size % t.data_shards == 0, "train.data_shards",
                f"must divide train.batch_size ({t.batch_size}) or be 0 (one per host)")
    _count(c, "train.loss_chunk", 0)
    checks.need(t.loss_chunk == 0 or t.seq_len % t.loss_chunk == 0, "train.loss_chunk",
                f"must divide train.seq_len ({t.seq_len}) or be 0")
    _count(c, "train.steps", 0)
    checks.one_of(c, "train.budget", BUDGETS)
    _count(c, "train.examples_per_step", 0)
    checks.need((t.steps > 0) == (t.budget == "steps"), "train.steps",
                f"must be > 0 with train.budget=steps and 0 otherwise (train.budget={t.budget!r}, steps={t.steps})")
    checks.is_type(c, "train.fit_rows", bool)
    checks.need(not t.fit_rows or t.budget == "examples", "train.fit_rows",
                f"needs train.budget=examples (under {t.budget!r} rows are filled by tokens)")
    checks.need(not t.fit_rows or c.data.num_epochs > 0, "train.fit_rows",
                "needs data.num_epochs > 0 (the rows are counted over every epoch at start)")
    per_step = examples_per_step(c)
    checks.need(c.data.examples_per_step in (0, per_step), "data.examples_per_step",
                f"is set from train.budget / train.examples_per_step ({per_step}); got {c.data.examples_per_step}")
    _count(c, "train.seed", 0)
    _count(c, "train.log_every", 1)
    checks.at_least(c, "train.peak_flops", 0.0)
    checks.one_of(c, "train.nonfinite", NONFINITE)
    _count(c, "train.max_skipped_steps", 0)

    for axis in MESH_AXES:
        checks.is_type(c, f"mesh.{axis}", int)
        checks.need(c.mesh[axis] >= 1 or c.mesh[axis] == -1, f"mesh.{axis}", f"must be >= 1 or -1; got {c.mesh[axis]}")
    checks.need([c.mesh[a] for a in MESH_AXES].count(-1) <= 1, "mesh", "at most one size may be -1 (the rest)")

    checks.is_type(c, "checkpoint.dir", str)
    _count(c, "checkpoint.every", 0)
    _count(c, "checkpoint.keep", 1)
    checks.is_type(c, "checkpoint.async_save", bool)

    checks.is_type(c, "export.dir", str)
    checks.is_type(c, "export.hf", bool)
    checks.is_type(c, "export.peft", bool)
    checks.one_of(c, "export.dtype", DTYPES)

    validate_data(c.data)


def examples_per_step(c: ConfigDict) -> int:
    """Examples in every optimizer step under train.budget=examples (train.examples_per_step, or one per
    row: batch_size, which always fits); 0 under the other budgets (rows are filled by tokens)."""
    return (c.train.examples_per_step or c.train.batch_size) if c.train.budget == "examples" else 0


def run_dir(c: ConfigDict) -> str:
    """train.run_dir, or runs/train/<meta.name> (relative to the working directory) when it is empty."""
    return c.train.run_dir or os.path.join("runs", "train", c.meta.name)


def _count(c: ConfigDict, field: str, low: int) -> None:
    """An integer field that must be >= low."""
    checks.is_type(c, field, int)
    checks.at_least(c, field, low)
