"""The training config: every field once, with its meaning. configs/train/*.py start from `base_config()`.

Sections: meta (labels for reports), model, method + lora, optim, train, mesh, checkpoint, export,
data (jax_distill.data.data_config()). `validate` checks values that a type check cannot.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from jax_distill.training.lora import DEFAULT_TARGETS


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


def base_config() -> ConfigDict:
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
    c.lora = ConfigDict()
    c.lora.rank = 64
    c.lora.alpha = 32.0
    c.lora.dropout = 0.05
    c.lora.targets = DEFAULT_TARGETS  # regex over parameter paths such as "layers/q_proj"

    c.optim = ConfigDict()
    c.optim.name = "adamw_8bit"  # adamw | adamw_8bit (block-quantized moments, as the paper)
    c.optim.lr = 1e-4
    c.optim.warmup_frac = 0.1  # linear warmup over this fraction of the steps, then cosine
    c.optim.final_lr_frac = 0.0  # cosine ends at final_lr_frac * lr
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0  # global-norm gradient clipping; 0 = off
    c.optim.min_8bit_size = 4096  # adamw_8bit keeps smaller tensors' moments in fp32

    c.train = ConfigDict()
    c.train.run_dir = ""  # local: metrics.jsonl, tensorboard/, train_summary.json, export/
    c.train.tokenizer = ""  # tokenizer folder; "" = model.path
    c.train.seq_len = 16384
    c.train.batch_size = 64  # global sequences per optimizer step (split over hosts and devices)
    c.train.grad_accum = 1  # microbatches per step (scan); batch_size must divide by it
    c.train.loss_chunk = 2048  # sequence chunk for vocab projection + cross-entropy (memory); 0 = whole row
    c.train.steps = 0  # 0 = one pass over the data times data.num_epochs (counted at start)
    c.train.seed = 0  # data order, LoRA init, dropout
    c.train.log_every = 10  # progress line every N steps (metrics.jsonl gets every step)
    c.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = from the device kind

    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # device mesh; one size may be -1 = the rest

    c.checkpoint = ConfigDict()
    c.checkpoint.dir = ""  # local or gs://bucket/path; "" = <run_dir>/checkpoints
    c.checkpoint.every = 500  # async save every N steps (also at the end and on SIGTERM); 0 = end only
    c.checkpoint.keep = 3  # keep the last K
    c.checkpoint.async_save = True

    c.export = ConfigDict()
    c.export.dir = ""  # "" = <run_dir>/export; hf/ (LoRA merged) and peft/ (LoRA mode)
    c.export.hf = True
    c.export.peft = True
    c.export.dtype = "bfloat16"

    c.data = data_config()
    return c


def validate(c: ConfigDict) -> None:
    """Value errors a type check cannot catch, each naming its field."""

    def need(ok: bool, field: str, msg: str):
        if not ok:
            raise ValueError(f"config.{field}: {msg}")

    need(c.method in ("lora", "full"), "method", f"must be lora or full, got {c.method!r}")
    need(bool(c.train.run_dir), "train.run_dir", "must be set (metrics, summary and exports go there)")
    need(bool(c.model.path) or bool(c.train.tokenizer), "train.tokenizer", "needed when model.path is empty")
    need(c.train.seq_len >= 2, "train.seq_len", "must be >= 2")
    need(c.train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(c.train.grad_accum >= 1 and c.train.batch_size % c.train.grad_accum == 0, "train.grad_accum",
         f"must divide train.batch_size ({c.train.batch_size})")
    need(c.train.loss_chunk == 0 or c.train.seq_len % c.train.loss_chunk == 0, "train.loss_chunk",
         f"must divide train.seq_len ({c.train.seq_len}) or be 0")
    need(c.model.remat in ("none", "full", "dots"), "model.remat", "must be none, full or dots")
    need(c.optim.name in ("adamw", "adamw_8bit"), "optim.name", f"must be adamw or adamw_8bit, got {c.optim.name!r}")
    need(0.0 <= c.optim.warmup_frac < 1.0, "optim.warmup_frac", "must be in [0, 1)")
    if c.method == "lora":
        need(c.lora.rank >= 1, "lora.rank", "must be >= 1")
        need(0.0 <= c.lora.dropout < 1.0, "lora.dropout", "must be in [0, 1)")


# The paper's students (../shared/PAPER.md): HF name, and whether full fine-tuning needs FSDP + remat.
PAPER_STUDENTS = {
    "qwen3.5-0.8b": ("Qwen/Qwen3.5-0.8B-Base", False),
    "qwen3.5-9b": ("Qwen/Qwen3.5-9B-Base", True),
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B", True),
    "gpt-oss-20b": ("openai/gpt-oss-20b", True),
}


def paper_config(student: str, method: str) -> ConfigDict:
    """The paper's recipe for one student and method. LoRA: r=64, alpha=32, dropout 0.05 on all attention
    and MLP projections, lr 1e-4; full: lr 2e-5 (FSDP + activation checkpointing for the 8-20B students).
    Both: cosine with 10% warmup, one epoch, 8-bit AdamW. Unknown in the paper, our defaults: global batch
    64 x 16k-token packed rows, bf16 compute, fp32 master weights (the frozen LoRA base is kept in bf16).
    Set model.path to a local or gs:// copy of the student (hub names resolve only with a hub)."""
    hf_name, large = PAPER_STUDENTS[student]
    c = base_config()
    c.meta.student = student
    c.meta.name = f"{student}-{method}"
    c.model.path = hf_name
    c.method = method
    c.optim.name = "adamw_8bit"
    c.optim.warmup_frac = 0.1
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
