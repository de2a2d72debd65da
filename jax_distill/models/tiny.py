"""Tiny students built from nothing: a BPE tokenizer trained on the task's own text and random weights.

This is what the embedded default experiment distils into on a machine with no model hub. The result is
an ordinary Hugging Face folder (tokenizer with a ChatML chat template and <think> tokens, config.json,
model.safetensors), so every later stage treats it exactly like a downloaded student.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<pad>")

# ChatML, as Qwen3 writes it; the assistant content carries "<think>\n...\n</think>\n\nanswer" verbatim.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], folder: str | os.PathLike, vocab_size: int = 512) -> Path:
    """Byte-level BPE (any text encodes) with chat special tokens, saved as an HF tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", bos_token=None, chat_template=CHATML_TEMPLATE
    )
    folder = Path(folder)
    fast.save_pretrained(folder)
    return folder


def student_config(
    family: str = "qwen3",
    vocab_size: int = 512,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    max_position_embeddings: int = 2048,
    eos_token_id: int | None = None,
):
    """The family config of a tiny Llama/Qwen3 student (tied embeddings, rope theta 1e4)."""
    from jax_distill.models import family_module
    from jax_distill.models.layers import Rope

    return family_module(family).Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rope=Rope(theta=10000.0, rotary_dim=head_dim),
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        max_position_embeddings=max_position_embeddings,
    )


def build_student(folder: str | os.PathLike, texts: Iterable[str], family: str = "qwen3", vocab_size: int = 512,
                  seed: int = 0, **shape) -> Path:
    """Train a tokenizer on `texts`, then write a randomly initialised Llama/Qwen3 student beside it
    (`shape`: the other student_config fields)."""
    from transformers import AutoTokenizer

    from jax_distill.models import random_model, save_pretrained

    folder = Path(folder)
    train_tokenizer(texts, folder, vocab_size)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = student_config(family, vocab_size=len(tok), eos_token_id=tok.eos_token_id, **shape)
    save_pretrained(random_model(family, cfg, seed), folder, tokenizer_from=folder)
    return folder
