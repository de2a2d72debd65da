"""Stage 2 (compress): `python -m jax_distill.traces.compress --config configs/traces/compress.py`.

Default: the extractive baseline over runs/traces/raw. Preset `compress.py:vllm` compresses with an
instruction model through offline vLLM (the paper used Llama-3.3-70B-Instruct and Ministral-3-14B);
one compressor per output directory. Engine fields: jax_distill/engines/__init__.py.
"""

from ml_collections import ConfigDict

from jax_distill.engines import default_config as engine_config
from jax_distill.traces.compress import DEFAULT_TEMPLATE


def get_config(preset: str = "extractive") -> ConfigDict:
    cfg = ConfigDict()
    cfg.in_dir = "runs/traces/raw"            # generate stage output (raw records)
    cfg.out_dir = "runs/traces/compressed-extractive"
    cfg.compressor = ConfigDict(dict(
        kind="extractive",                    # extractive (model-free baseline) | engine
        name="",                              # label in records and tables ("" = kind or model folder name)
        engine=engine_config(),               # used when kind=engine
        template=DEFAULT_TEMPLATE,            # user turn; {question}, {trace}, {answer} are filled in
        system="",                            # optional system turn
        temperature=0.3,                      # the paper's compression temperature
        top_p=1.0,
        max_tokens=4096,                      # budget for the compressed trace
        seed=0,                               # base seed; retry attempt a uses seed + 1000003 * a
    ))
    cfg.compressor.engine.reasoning = "none"  # instruction models answer in plain text
    cfg.policy = "keep_raw"                   # on validation failure: keep_raw | drop | retry
    cfg.retries = 2                           # extra attempts under policy=retry (then drop)
    cfg.require_answer = True                 # a compressed trace must mention the known answer
    cfg.verify_timeout_s = 5.0
    cfg.chunk_size = 64                       # records per atomically written chunk
    cfg.shard = "0/1"                         # "i/n": this host's share of the records (by id hash)
    cfg.student_tokenizer = ""                # HF tokenizer folder for rho in student tokens

    if preset == "vllm":
        cfg.out_dir = "runs/traces/compressed-llama"
        cfg.compressor.kind = "engine"
        cfg.compressor.engine.kind = "vllm"
        cfg.compressor.engine.model = "/path/to/Llama-3.3-70B-Instruct"
        cfg.compressor.engine.vllm.tensor_parallel_size = 4
    elif preset != "extractive":
        raise ValueError(f"unknown preset {preset!r} (extractive, vllm)")
    return cfg
