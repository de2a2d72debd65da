"""The paper's training recipe for one student and method: `configs/train/paper.py:<student>,<method>`.

  python -m jax_distill.train --config configs/train/paper.py:llama-3.1-8b,lora \
      --config.model.path=<local or gs:// HF folder> --config.data.path=<traces> --config.train.run_dir=<dir> \
      --config.meta.teacher=... --config.meta.variant=...

Students: qwen3.5-0.8b, qwen3.5-9b, llama-3.1-8b, gpt-oss-20b; methods: lora, full. LoRA: r=64, alpha=32,
dropout 0.05 on all attention and MLP projections, lr 1e-4; full: lr 2e-5 (FSDP + activation checkpointing
for the 8-20B students). Both: cosine with 10% warmup, one epoch, 8-bit AdamW. Unknown in the paper, our
defaults: train.budget=examples (64 examples per step, so raw and compressed runs take the same number of
steps; see training/config.py), packed into 64 rows of 16k tokens, bf16 compute, fp32 master weights (the frozen LoRA base
is kept in bf16). model.path starts as the hub name for reference only: point it at a local or gs:// copy.
"""

from jax_distill.training.config import METHODS, default_config

# The paper's students (../shared/PAPER.md): HF name, and whether full fine-tuning needs FSDP + remat.
STUDENTS = {
    "qwen3.5-0.8b": ("Qwen/Qwen3.5-0.8B-Base", False),
    "qwen3.5-9b": ("Qwen/Qwen3.5-9B-Base", True),
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B", True),
    "gpt-oss-20b": ("openai/gpt-oss-20b", True),
}


def get_config(arg: str):
    student, _, method = arg.partition(",")
    if student not in STUDENTS or method not in METHODS:
        raise ValueError(f"configs/train/paper.py:<student>,<method> with student in {', '.join(STUDENTS)} "
                         f"and method in {', '.join(METHODS)}; got {arg!r}")
    hf_name, large = STUDENTS[student]
    c = default_config()
    c.meta.student = student
    c.meta.name = f"{student}-{method}"
    c.model.path = hf_name
    c.method = method
    c.optim.name = "adamw_8bit"
    c.optim.warmup_frac = 0.1
    # one epoch at a fixed batch of examples: every variant of a cell takes the same number of updates
    c.train.budget = "examples"
    c.train.examples_per_step = 0  # = batch_size, one example per row at worst: always fits
    c.train.steps = 0
    c.data.num_epochs = 1
    c.train.seq_len = 16384
    c.train.batch_size = 64
    c.checkpoint.every = 200
    if method == "lora":
        c.lora.rank, c.lora.alpha, c.lora.dropout = 64, 32.0, 0.05
        c.optim.lr = 1e-4
        c.model.param_dtype = "bfloat16"  # frozen base; adapters and their optimizer state stay fp32
    else:
        c.optim.lr = 2e-5
        c.export.peft = False
    if large:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.model.remat = "full"
        c.train.grad_accum = 8
    else:
        c.model.remat = "dots"
        c.train.grad_accum = 4
    return c
