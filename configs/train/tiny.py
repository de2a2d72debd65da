"""Tiny CPU run (< 1 minute on 2 cores): a random 2-layer Llama (vocab 512, width 64), LoRA r=8, fp32.

  python -m jax_distill.train --config configs/train/tiny.py \
      --config.data.path=traces.jsonl --config.train.tokenizer=<tokenizer folder> --config.train.run_dir=runs/tiny

The tokenizer's vocabulary must fit model.hf.vocab_size (512); tests use tests/hf_tiny.tokenizer_dir().
"""

from jax_distill.training.config import default_config


def get_config():
    c = default_config()
    c.meta.name = "tiny"
    c.model.compute_dtype = "float32"
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.optim.name = "adamw"
    c.optim.lr = 3e-3
    c.train.seq_len = 64
    c.train.loss_chunk = 32  # two chunks: the chunked loss path runs in every test
    c.train.batch_size = 8
    c.train.steps = 30
    c.train.log_every = 5
    c.checkpoint.every = 10
    c.data.num_epochs = 0  # repeat: train.steps decides the length
    c.data.read_threads = 1
    c.export.dtype = "float32"
    return c
