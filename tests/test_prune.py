"""Student-scored pruning (traces/prune.py) with tiny Qwen3 students on CPU.

prune_tokens: a student with arranged weights (attention and MLP outputs zeroed, an untied random
lm_head) is a bigram model, so each trace token's surprisal is a numpy computation; the removed tokens
must be the lowest-scoring ones and the answer's tokens must stay. prune_steps: each step's score is
checked against the answer's log-probability from an unbatched forward pass over ids put together by
hand from the ChatML turns, and the removed steps must be the lowest-scoring. budget=match: on the
procedural teacher's traces and their extractive twins, each pruned trace's length in student tokens
equals its twin's within one token (tokens) or one step (steps), and the answer survives.
"""

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hf_tiny import load_tokenizer, tokenizer_dir

from jax_distill.cli import load_config
from jax_distill.models import random_model, save_pretrained
from jax_distill.models.tiny import student_config
from jax_distill.problems import synthetic
from jax_distill.traces import compress, generate, prune, store

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = synthetic.generate(1, seed=5, steps=2)[0]
TRACE = ("First, restate the problem.\nThen compute the total: 8 + 6 = 14.\nHmm, let me double-check: 14 - 9 = 5.\n"
         f"Wait, 12 * 7 = 84, that does not matter.\nSo the answer is {PROBLEM.gold}.")
ANSWER = f"The answer is \\boxed{{{PROBLEM.gold}}}."


def student(folder: Path, bigram: bool):
    tok = load_tokenizer()
    cfg = student_config("qwen3", vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=2, num_kv_heads=1, head_dim=16, eos_token_id=tok.eos_token_id)
    model = random_model("qwen3", dataclasses.replace(cfg, tie_word_embeddings=False), seed=3)
    if bigram:  # every layer adds nothing: logits = rms_norm(embed[token]) @ lm_head
        layers = dict(model.params["layers"], o_proj=jnp.zeros_like(model.params["layers"]["o_proj"]),
                      down_proj=jnp.zeros_like(model.params["layers"]["down_proj"]))
        model.params = dict(model.params, layers=layers, lm_head=model.params["lm_head"] * 40.0)
    save_pretrained(model, folder, tokenizer_from=tokenizer_dir())
    return model


def write_raw(folder: Path, traces: list[str]):
    recs = [store.make_record(id=f"{PROBLEM.id}-{k}/s0", problem=PROBLEM, answer=ANSWER, trace=t, variant="raw",
                              meta={"stage": "generate", "engine": "hand", "model": "hand"}) for k, t in enumerate(traces)]
    store.write_chunk(str(folder), "generate-shard000of001", 0, recs, [],
                      {"stage": "generate", "ids": [r["id"] for r in recs], "counts": {}})
    return recs


def prune_cfg(tmp_path, model_dir, mode, **fields):
    return load_config(str(ROOT / "configs/traces/prune.py"), {
        "raw_dir": str(tmp_path / "raw"), "out_dir": str(tmp_path / f"prune-{mode}"), "mode": mode,
        "budget": "ratio:0.5", "scorer.model": str(model_dir), "scorer.batch_size": 8, **fields})


def prune_trace(tmp_path, mode: str, bigram: bool):
    """(student, its pruned record of TRACE at half its length, tokenizer)."""
    model = student(tmp_path / "student", bigram=bigram)
    write_raw(tmp_path / "raw", [TRACE])
    summary = prune.run(prune_cfg(tmp_path, tmp_path / "student", mode))
    assert summary["balanced"] and summary["total"]["pruned"] == 1
    return model, next(store.read_records(str(tmp_path / f"prune-{mode}"))), load_tokenizer()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_prune_tokens_removes_the_lowest_surprisal_tokens(tmp_path):
    model, rec, tok = prune_trace(tmp_path, "tokens", bigram=True)
    ids = tok(TRACE, add_special_tokens=False)["input_ids"]
    # the bigram model's surprisal of each trace token, in numpy: token t is predicted from token t-1
    # (the first from the last token of the prompt, "<think>\n")
    prompt = f"<|im_start|>user\n{PROBLEM.question}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    prev = [tok(prompt, add_special_tokens=False)["input_ids"][-1]] + ids[:-1]
    p = {k: np.asarray(v, np.float64) for k, v in model.params.items() if k != "layers"}
    x = p["embed"][prev]
    h = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * p["final_norm"]
    logp = log_softmax(h @ p["lm_head"])
    surprisal = -logp[np.arange(len(ids)), ids]
    assert surprisal.std() > 1.0  # the arranged weights spread the scores
    # the removed tokens: by budget, the lowest-surprisal ones outside the answer's tokens
    budget, removed = rec["meta"]["budget_tokens"], rec["meta"]["removed_tokens"]
    assert budget == round(0.5 * len(ids)) and 0 < removed < len(ids)
    enc = tok(TRACE, add_special_tokens=False, return_offsets_mapping=True)
    start = TRACE.rindex(PROBLEM.gold)
    answer_tokens = {i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < start + len(PROBLEM.gold) and b > start}
    order = sorted((i for i in range(len(ids)) if i not in answer_tokens), key=lambda i: (surprisal[i], i))
    gone = set(order[:removed])
    kept = [t for i, t in enumerate(ids) if i not in gone]
    assert rec["trace"] == tok.decode(kept, clean_up_tokenization_spaces=False).strip()
    assert max(surprisal[i] for i in gone) <= min(surprisal[i] for i in order[removed:])  # ties: repeated bigrams
    assert len(tok(rec["trace"], add_special_tokens=False)["input_ids"]) == rec["meta"]["student_tokens"] <= budget
    assert rec["trace"].endswith(f"answer is {PROBLEM.gold}.") or PROBLEM.gold in rec["trace"]
    assert rec["answer"] == ANSWER and rec["variant"] == "pruned" and rec["id"] == f"{PROBLEM.id}-0/s0/pruned"


def test_prune_steps_removes_the_steps_the_answer_needs_least(tmp_path):
    model, rec, tok = prune_trace(tmp_path, "steps", bigram=False)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    steps = TRACE.split("\n")

    def answer_surprisal(trace: str) -> float:  # one unpadded forward pass over ids put together by hand
        before = ids(f"<|im_start|>user\n{PROBLEM.question}<|im_end|>\n<|im_start|>assistant\n<think>\n")
        seq = before + ids(trace) + ids("\n</think>\n\n") + ids(ANSWER)
        tokens = jnp.asarray([seq], jnp.int32)
        logits, _ = model.forward(tokens, jnp.arange(len(seq))[None], jnp.ones_like(tokens))
        logp = log_softmax(np.asarray(logits[0], np.float64))
        n = len(ids(ANSWER))
        return -sum(logp[len(seq) - n - 1 + k, seq[len(seq) - n + k]] for k in range(n))

    base = answer_surprisal(TRACE)
    scores = [answer_surprisal("\n".join(s for k, s in enumerate(steps) if k != i)) - base for i in range(len(steps))]
    np.testing.assert_allclose(rec["meta"]["step_scores"], scores, atol=2e-3)
    removed = rec["meta"]["removed_steps"]
    assert rec["meta"]["protected_step"] == len(steps) - 1 and removed  # the step stating the answer stays
    rest = [i for i in range(len(steps) - 1) if i not in removed]
    assert max(scores[i] for i in removed) <= min(scores[i] for i in rest) + 1e-3 if rest else True
    assert rec["trace"] == "\n".join(s for i, s in enumerate(steps) if i not in removed)
    budget = rec["meta"]["budget_tokens"]
    assert len(ids(rec["trace"])) <= budget
    back = "\n".join(s for i, s in enumerate(steps) if i not in removed[:-1])  # one step fewer removed: too long
    assert len(ids(back)) > budget
    assert rec["answer"] == ANSWER and PROBLEM.gold in rec["trace"]


@pytest.mark.parametrize("mode", ["tokens", "steps"])
def test_match_budget_prunes_to_the_twins_length(tmp_path, mode):
    tok_dir = str(tokenizer_dir())
    raw_dir, comp_dir = tmp_path / "raw", tmp_path / "comp"
    generate.run(load_config(str(ROOT / "configs/traces/generate.py"), {
        "out_dir": str(raw_dir), "problems.synthetic.num": 12, "sampling.n": 1, "student_tokenizer": tok_dir}))
    compress.run(load_config(str(ROOT / "configs/traces/compress.py"),
                             {"in_dir": str(raw_dir), "out_dir": str(comp_dir), "student_tokenizer": tok_dir}))
    student(tmp_path / "random", bigram=False)
    cfg = prune_cfg(tmp_path, tmp_path / "random", mode, budget="match:extractive", match_dir=str(comp_dir),
                    chunk_size=4)
    summary = prune.run(cfg)
    total = summary["total"]
    twins = {r["meta"]["source_id"]: r for r in store.read_records(str(comp_dir))}
    raws = {r["id"]: r for r in store.read_records(str(raw_dir))}
    assert summary["balanced"] and total["inputs"] == len(twins) and total["pruned"] > 0
    tok = load_tokenizer()
    ntok = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    out = list(store.read_records(str(tmp_path / f"prune-{mode}")))
    assert len(out) == total["pruned"] + total["within_budget"]
    for rec in out:
        raw, twin = raws[rec["meta"]["source_id"]], twins[rec["meta"]["source_id"]]
        budget = ntok(twin["trace"])
        n = ntok(rec["trace"])
        assert rec["meta"]["budget_tokens"] == budget and rec["meta"]["student_tokens"] == n <= budget
        assert rec["meta"]["compressed_id"] == twin["id"] and rec["meta"]["compressor"] == "extractive"
        assert rec["answer"] == raw["answer"] and raw["gold"] in rec["trace"]  # the answer survives
        if mode == "tokens":
            assert budget - n <= 1
        else:
            steps = raw["trace"].split("\n")
            removed = rec["meta"]["removed_steps"]
            back = "\n".join(s for i, s in enumerate(steps) if i not in removed[:-1])
            assert ntok(back) > budget  # within one step of the budget
    again = prune.run(cfg)
    assert again["this_run"] == {}  # resumes: every chunk finished


def test_validate_names_the_field(tmp_path):
    write_raw(tmp_path / "raw", [TRACE])
    with pytest.raises(Exception, match="scorer.model"):
        prune.validate(prune_cfg(tmp_path, "", "steps"))
    with pytest.raises(Exception, match="budget"):
        prune.validate(prune_cfg(tmp_path, tmp_path, "steps", budget="half"))
    with pytest.raises(Exception, match="budget"):
        prune.validate(prune_cfg(tmp_path, tmp_path, "steps", budget="ratio:1.5"))
