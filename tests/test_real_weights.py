"""SmolLM2-135M-Instruct (real Llama weights) against transformers on a real chat prompt."""

import jax
import jax.numpy as jnp
import numpy as np

from jax_distill.models import from_pretrained


def test_smollm2_logits_match_transformers(smollm2):
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(smollm2)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 7 + 5? Explain briefly."}], add_generation_prompt=True, return_dict=False
    )
    ids = np.asarray(ids, np.int32)[None]
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()

    model = from_pretrained(smollm2)
    assert model.family == "llama" and model.config.tie_word_embeddings
    positions = np.arange(ids.shape[1], dtype=np.int32)[None]
    ours, _ = jax.jit(model.forward)(jnp.asarray(ids), jnp.asarray(positions), jnp.ones_like(jnp.asarray(ids)))
    diff = np.abs(np.asarray(ours) - theirs).max()
    assert diff < 1e-3, diff
    assert ours[0, -1].argmax() == theirs[0, -1].argmax()
