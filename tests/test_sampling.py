"""JAX sampler: greedy parity with transformers.generate, cache vs recompute, stops, sampling knobs, engine."""

import dataclasses

import hf_tiny
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_distill.engines.base import Completion
from jax_distill.engines.jax_engine import JaxEngine
from jax_distill.models import from_pretrained
from jax_distill.parallel.sharding import ShardingRules, make_mesh
from jax_distill.sampling import Sampler, filter_logits, sample_logits
from jax_distill.sampling_params import SamplingParams

PROMPTS = ["What is 17 + 25? Let me think", "Tom has 3 apples and buys 4 more bags of 5 apples each. So"]


def greedy(max_tokens, **fields):
    """Greedy decoding (temperature 0, no top-p) of up to max_tokens tokens."""
    return SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, **fields)


def families():
    """Every family with a tiny HF builder in hf_tiny (qwen3_5 / gpt_oss join when theirs land)."""
    out = []
    for f in ["llama", "qwen3", "qwen3_5", "gpt_oss"]:
        try:
            hf_tiny.tiny_hf_config(f)
        except ValueError:
            continue
        out.append(f)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return hf_tiny.load_tokenizer()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = hf_tiny.save_tiny_model("llama", tmp_path_factory.mktemp("llama"))
    return folder, from_pretrained(folder)


def hf_greedy(folder, prompts, new_tokens, eos=False):
    import torch
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    if not eos:
        ref.generation_config.eos_token_id = None
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = ref.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=ref.config.pad_token_id or 0,
        )
        out.append(gen[0, len(p) :].tolist())
    return out


@pytest.mark.parametrize("family", families())
def test_greedy_matches_transformers(family, tokenizer, tmp_path):
    """32 greedy tokens, left-padded batch of different lengths. Llama runs sharded (weights and batch on
    a 2x2x2 mesh of the simulated devices); the others on one device (SPMD compiles cost CPU test time)."""
    folder = hf_tiny.save_tiny_model(family, tmp_path / family)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    theirs = hf_greedy(folder, prompts, 32)
    rules = ShardingRules(make_mesh(data=2, fsdp=2, tensor=2)) if family == "llama" else None
    model = from_pretrained(folder, rules=rules)
    if rules is not None:
        assert len(model.params["layers"]["q_proj"].sharding.device_set) == 8
    out = Sampler(model, tokenizer, rules=rules).generate(prompts, greedy(32, stop_token_ids=()))
    assert out.token_ids == theirs
    assert out.lengths == [32, 32] and out.finish_reasons == ["length", "length"]
    assert out.stop_reasons == ["max_tokens", "max_tokens"]
    assert out.texts == [tokenizer.decode(t, skip_special_tokens=False) for t in theirs]


def test_smollm2_greedy_chat_matches_transformers(smollm2):
    folder = smollm2
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "user", "content": "Why is the sky blue? Explain in two sentences."}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    theirs = hf_greedy(folder, [prompt], 32, eos=True)[0]
    out = Sampler(from_pretrained(folder), tok).generate([prompt], greedy(32))
    assert out.token_ids[0] == theirs
    assert len(theirs) > 8  # a real answer, not an immediate EOS
    assert out.texts[0] == tok.decode([t for t in theirs if t != tok.eos_token_id], skip_special_tokens=False)


def test_cached_decoding_equals_full_recompute(llama, tokenizer):
    """Logits of every cached decode step == logits of the whole sequence recomputed without cache."""
    folder, model = llama
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    steps = 12
    out = Sampler(model, tokenizer).generate(
        prompts, greedy(steps, stop_token_ids=()), record_logits=True
    )
    forward = jax.jit(model.forward)
    for row, (p, gen) in enumerate(zip(prompts, out.token_ids)):
        # step i sees prompt + gen[:i]: one right-padded row per step, recomputed from scratch
        T = len(p) + steps
        tokens = np.zeros((steps, T), np.int32)
        segments = np.zeros((steps, T), np.int32)
        for i in range(steps):
            seq = p + gen[:i]
            tokens[i, : len(seq)] = seq
            segments[i, : len(seq)] = 1
        positions = np.tile(np.arange(T, dtype=np.int32), (steps, 1))
        full, _ = forward(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
        full = np.asarray(full)
        recomputed = np.stack([full[i, len(p) + i - 1] for i in range(steps)])
        np.testing.assert_allclose(out.logits[row, :steps], recomputed, atol=1e-4, rtol=0)


def test_stops_on_eos_and_stop_strings(llama, tokenizer):
    _, model = llama
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    sampler = Sampler(model, tokenizer, chunk_size=4)
    free = sampler.generate(prompts, greedy(16, stop_token_ids=()))
    # EOS: declare the token generated at step 5 of row 0 an end-of-sequence id
    eos = free.token_ids[0][5]
    first = free.token_ids[0].index(eos)
    got = sampler.generate(prompts, greedy(16, stop_token_ids=(eos,)))
    assert got.token_ids[0] == free.token_ids[0][: first + 1] and got.finish_reasons[0] == "stop"
    assert got.stop_reasons[0] == ("eos" if eos in sampler.eos_ids else "stop")  # a requested stop id
    assert got.texts[0] == tokenizer.decode(free.token_ids[0][:first], skip_special_tokens=False)
    # stop string: a piece of row 1's text from the middle (multi-token), found across chunk boundaries
    text = free.texts[1]
    stop = next(text[i : i + 3] for i in range(6, len(text) - 3) if len(tokenizer.encode(text[i : i + 3])) > 1)
    got = sampler.generate(prompts, greedy(16, stop=(stop,), stop_token_ids=()))
    assert got.texts[1] == text[: text.index(stop)]
    assert got.finish_reasons[1] == "stop" and got.stop_reasons[1] == "stop"
    n = got.lengths[1]
    assert got.token_ids[1] == free.token_ids[1][:n]
    assert stop in tokenizer.decode(free.token_ids[1][:n]) and stop not in tokenizer.decode(free.token_ids[1][: n - 1])


def test_temperature_sampling_seeded(llama, tokenizer):
    _, model = llama
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    sampler = Sampler(model, tokenizer)
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=1.0, seed=0, stop_token_ids=())
    a = sampler.generate(prompts, params, sample_ids=[11, 22])
    b = sampler.generate(prompts, params, sample_ids=[11, 22])
    c = sampler.generate(prompts, dataclasses.replace(params, seed=1), sample_ids=[11, 22])
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    # a sample is keyed by its id, not by its row: swapping the batch order swaps the outputs
    swapped = sampler.generate(prompts[::-1], params, sample_ids=[22, 11])
    assert swapped.token_ids == a.token_ids[::-1]
    argmax = sampler.generate(prompts, greedy(16, stop_token_ids=()))
    assert a.token_ids != argmax.token_ids


def test_top_p_keeps_only_the_nucleus():
    probs = np.array([0.5, 0.25, 0.15, 0.1], np.float32)
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = lambda k, p: np.isfinite(np.asarray(filter_logits(logits, k, p))[0]).nonzero()[0].tolist()  # noqa: E731
    assert kept(0, 0.7) == [0, 1]  # 0.5 < 0.7 <= 0.75
    assert kept(0, 0.4) == [0]  # the most likely token always stays
    assert kept(0, 1.0) == [0, 1, 2, 3]
    assert kept(3, 1.0) == [0, 1, 2]
    assert kept(2, 0.6) == [0]  # top-p on the renormalised top-2: 0.5/0.75 = 0.67 already >= 0.6
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    draw = jax.jit(sample_logits, static_argnames="mode")
    draws = np.asarray(draw(jnp.tile(logits, (n, 1)), keys, 1.0, 0, 0.7, mode="filter"))
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).mean() - 2 / 3) < 0.03  # renormalised nucleus: 0.5 / 0.75


def test_engine_chat_requests(llama, tokenizer):
    """The trace stages' entry point: make_engine(kind="jax") on an HF folder, batch over 8 devices."""
    from jax_distill.engines import default_config, make_engine

    folder, _ = llama
    requests = [
        [{"role": "user", "content": "What is 8 + 6?"}],
        [{"role": "user", "content": "Which option is correct?"}],
    ]
    params = SamplingParams(n=2, temperature=0.9, top_p=0.95, max_tokens=12, seed=3)
    cfg = default_config()
    cfg.update(dict(kind="jax", model=str(folder), batch_size=4))
    engine = make_engine(cfg)
    assert isinstance(engine, JaxEngine) and engine.sampler.rules.shards("batch") == 8
    out = engine.generate(requests, params)
    assert [len(o) for o in out] == [2, 2]
    for req, outs in zip(requests, out):
        prompt = tokenizer.apply_chat_template(req, add_generation_prompt=True, return_dict=False)
        for c in outs:
            assert isinstance(c, Completion)
            assert c.prompt_tokens == len(prompt)
            assert 1 <= c.completion_tokens <= 12
            assert c.finish_reason in ("stop", "length")
            # the tiny ChatML tokenizer's EOS is its turn's <|im_end|>: every stop is the turn's end
            assert c.stop_reason == ("end_of_turn" if c.finish_reason == "stop" else "max_tokens")
    assert out[0][0].text != out[0][1].text  # n samples differ
    assert engine.generate(requests, params) == out  # same seed, same samples
