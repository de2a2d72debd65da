"""Tiny CPU run (< 1 minute on 2 cores): a random 2-layer Llama (vocab 512, width 64), LoRA r=8, fp32.

  python -m jax_distill.train --config configs/train/tiny.py

trains on its own: with data.path empty, on procedural traces of 300 problems with a tokenizer trained on
them (jax_distill/training/builtin.py), in runs/train/tiny. Your own traces:
--config.data.path=traces.jsonl --config.train.tokenizer=<tokenizer folder> (its vocabulary must fit
model.hf.vocab_size, 512; tests use tests/hf_tiny.tokenizer_dir()) --config.train.run_dir=<dir>.
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
    c.train.seq_len = 256  # the built-in traces' records are up to ~230 tokens
    c.train.loss_chunk = 32  # several chunks: the chunked loss path runs in every test
    c.train.batch_size = 8
    c.train.budget = "steps"  # a fixed number of updates, whatever the data
    c.train.steps = 30
    c.train.log_every = 5
    c.checkpoint.every = 10
    c.data.builtin_problems = 300
    c.data.num_epochs = 0  # repeat: train.steps decides the length
    c.data.read_threads = 1
    c.export.dtype = "float32"
    return c
