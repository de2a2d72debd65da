"""Greedy decode throughput of jax_distill.sampling against transformers.generate, same shapes, same card.

Random weights in bf16, prompt 256, no early stop (EOS disabled in both). Prints one JSON line per shape
with both rates and their ratio (ours / HF); only ratios from one run on one card are meaningful.
`python bench/sampler_decode.py [--smoke]` (--smoke: tiny shapes on CPU, to check the script).
Also checks, on the accelerator, that 32 greedy tokens of a tiny random Llama equal transformers'.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = {  # name -> (HF config class, fields, batch, new tokens)
    "llama3.1-8b": (
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            rope_theta=500000.0,
            max_position_embeddings=8192,
        ),
        32,
        128,
    ),
    "qwen3.5-0.8b": (
        "Qwen3_5TextConfig",
        dict(
            vocab_size=248320,
            hidden_size=1024,
            intermediate_size=3584,
            num_hidden_layers=24,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=256,
            linear_num_key_heads=16,
            linear_num_value_heads=16,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            tie_word_embeddings=True,
            max_position_embeddings=8192,
        ),
        64,
        256,
    ),
}
SMOKE = {
    "llama-smoke": (
        "LlamaConfig",
        dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        4,
        16,
    ),
}
PROMPT = 256


def greedy(max_tokens: int):
    """Greedy decoding of exactly max_tokens tokens (no stop ids), as transformers is run here."""
    from jax_distill.sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, stop_token_ids=())


def hf_rate(cls_name, fields, batch, new, device):
    import torch
    import transformers

    cfg = getattr(transformers, cls_name)(**fields)
    cfg.architectures = ["Qwen3_5ForCausalLM" if "Qwen3_5" in cls_name else "LlamaForCausalLM"]
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    ids = torch.randint(0, cfg.vocab_size, (batch, PROMPT), device=device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, **kw)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
    assert out.shape[1] == PROMPT + new
    hf = cfg.to_dict()
    del model, out
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return batch * new / secs, hf


def jax_rate(hf, batch, new):
    import jax.numpy as jnp
    import numpy as np

    from jax_distill.models import config_from_hf, random_model
    from jax_distill.sampling import Sampler

    family, cfg = config_from_hf(hf, dtype="bfloat16")
    model = random_model(family, cfg, dtype=jnp.bfloat16)

    class Tok:  # the sampler only decodes text; ids are enough here
        pad_token_id, eos_token_id = 0, None

        def decode(self, ids, skip_special_tokens=False):
            return ""

    sampler = Sampler(model, Tok())
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, PROMPT)).tolist()
    params = greedy(new)
    sampler.generate(prompts, params)  # compile
    t = time.perf_counter()
    out = sampler.generate(prompts, params)
    secs = time.perf_counter() - t
    assert out.lengths == [new] * batch
    return batch * new / secs


def greedy_parity(tmp):
    import hf_tiny
    import jax
    import transformers

    from jax_distill.models import from_pretrained
    from jax_distill.sampling import Sampler

    folder = hf_tiny.save_tiny_model("llama", os.path.join(tmp, "tiny"))
    tok = hf_tiny.load_tokenizer()
    prompts = [tok.encode("What is 17 + 25? Let me think"), tok.encode("Tom has 3 apples and buys 4 more")]
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ref.generation_config.eos_token_id = None
    import torch

    theirs = [
        ref.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )[0, len(p) :].tolist()
        for p in prompts
    ]
    with jax.default_matmul_precision("highest"):
        ours = Sampler(from_pretrained(folder), tok).generate(prompts, greedy(32))
    return ours.token_ids == theirs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--shapes", default="")
    args = ap.parse_args()
    import tempfile

    import jax

    device = "cpu" if args.smoke or jax.default_backend() == "cpu" else "cuda"
    print(json.dumps({"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({"tiny_llama_greedy_parity_32_tokens": greedy_parity(tmp)}), flush=True)
    shapes = SMOKE if args.smoke else SHAPES
    for name in [s for s in (args.shapes.split(",") if args.shapes else shapes)]:
        cls_name, fields, batch, new = shapes[name]
        hf_tps, hf = hf_rate(cls_name, fields, batch, new, device)
        ours = jax_rate(hf, batch, new)
        print(
            json.dumps(
                {
                    "shape": name,
                    "batch": batch,
                    "prompt": PROMPT,
                    "new_tokens": new,
                    "hf_generate_tok_s": round(hf_tps, 1),
                    "jax_sampler_tok_s": round(ours, 1),
                    "ratio_jax_over_hf": round(ours / hf_tps, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
