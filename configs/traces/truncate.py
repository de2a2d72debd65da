"""Ablation inputs (truncate): `python -m jax_distill.traces.truncate --config configs/traces/truncate.py`.

Writes length-matched truncations of the raw traces (per example, in student tokens, to the length of
the same example's compressed trace) and answer-only records into one directory.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    cfg = ConfigDict()
    cfg.raw_dir = "runs/traces/raw"                          # generate stage output
    cfg.compressed_dir = "runs/traces/compressed-extractive"  # compress stage output (one compressor)
    cfg.out_dir = "runs/traces/truncated-extractive"
    cfg.variants = "truncated,answer_only"                   # which ablation records to write
    cfg.student_tokenizer = ""                               # HF tokenizer folder (required for truncated)
    cfg.chunk_size = 256                                     # records per atomically written chunk
    cfg.shard = "0/1"                                        # "i/n": this host's share (by raw record id)
    return cfg
