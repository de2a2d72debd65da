"""The free baselines of the compress stage (traces/select.py): shortest_correct picks the shortest
verified sample of each question, post_think keeps the teacher's visible text on think and harmony
records, and the gpt-oss effort presets render harmony prompts at the asked reasoning effort."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hf_tiny import tokenizer_dir

from jax_distill.cli import config_file, load_config
from jax_distill.engines.reasoning import make_completion
from jax_distill.problems import synthetic
from jax_distill.traces import compress, generate, store

ROOT = Path(__file__).resolve().parents[1]


def compress_cfg(in_dir, out_dir, kind, **overrides):
    return load_config(str(ROOT / "configs/traces/compress.py"),
                       {"in_dir": str(in_dir), "out_dir": str(out_dir), "compressor.kind": kind, **overrides})


def test_shortest_correct_picks_the_shortest_verified_sample(tmp_path):
    tok = str(tokenizer_dir())
    raw_dir = tmp_path / "raw"
    generate.run(load_config(str(ROOT / "configs/traces/generate.py"), {
        "out_dir": str(raw_dir), "problems.synthetic.num": 30, "sampling.n": 4, "chunk_size": 8,
        "engine.procedural.wrong_rate": 0.3, "student_tokenizer": tok}))
    raws = list(store.read_records(str(raw_dir)))
    by_question = {}
    for r in raws:
        by_question.setdefault(r["problem_id"], []).append(r)
    assert any(len(v) >= 3 for v in by_question.values())  # several verified samples to choose from

    out = tmp_path / "shortest"
    summary = compress.run(compress_cfg(raw_dir, out, "shortest_correct", student_tokenizer=tok, chunk_size=5))
    total = summary["total"]
    assert summary["balanced"] and total["inputs"] == total["compressed"] == len(raws)
    assert total["questions"] == len(by_question)
    got = {r["meta"]["source_id"]: r for r in store.read_records(str(out))}
    assert set(got) == {r["id"] for r in raws}  # one twin per raw training example, as raw trains on all
    for pid, samples in by_question.items():
        shortest = min(len(s["trace"]) for s in samples)
        expect = min(s["id"] for s in samples if len(s["trace"]) == shortest)  # ties: the smaller id
        chosen = next(s for s in samples if s["id"] == expect)
        ranked = sorted(samples, key=lambda s: (len(s["trace"]), s["id"]))
        for source in samples:
            rec, meta = got[source["id"]], got[source["id"]]["meta"]
            assert rec["id"] == f"{source['id']}/compressed" and rec["variant"] == "compressed"
            assert rec["trace"] == chosen["trace"] and rec["answer"] == chosen["answer"]
            assert meta["chosen"] == expect and meta["compressor"] == "shortest_correct"
            assert meta["chosen_sample_index"] == int(expect.rsplit("/s", 1)[1]) and meta["drawn"] == 4
            assert meta["candidates"] == len(samples) and meta["rank_by_length"] == ranked.index(source) + 1
            # rho against the raw example this twin replaces in training
            assert meta["rho_chars"] == pytest.approx(shortest / len(source["trace"])) and meta["rho_chars"] <= 1
            assert meta["rho_tokens"] == pytest.approx(chosen["meta"]["student_tokens"] / source["meta"]["student_tokens"])
    assert summary["table"][0]["compressor"] == "shortest_correct"
    again = compress.run(compress_cfg(raw_dir, out, "shortest_correct", student_tokenizer=tok, chunk_size=5))
    assert again["this_run"] == {}  # resumes: every question finished


def raw_record(problem, k, completion):
    meta = {"stage": "generate", "engine": "test", "model": "m", "sampling": {"n": 1}, "correct": True}
    return store.make_record(id=f"{problem.id}/s{k}", problem=problem, answer=completion.answer_text.strip(),
                             trace=completion.reasoning.strip(), variant="raw", meta=meta)


def write_raw(folder, records):
    store.write_chunk(str(folder), "generate-shard000of001", 0, records, [],
                      {"stage": "generate", "ids": [r["problem_id"] for r in records], "counts": {}})


LONG = "Let me think. " * 30


def test_post_think_on_think_and_harmony_records(tmp_path):
    p = synthetic.generate(4, seed=3, steps=2)
    gold = [x.gold for x in p]
    texts = [
        # think style (Qwen3 / R1): the visible text after </think> restates the solution in a few lines
        (f"<think>\n{LONG}\n</think>\n\nFirst we combine the two amounts.\nThat gives {gold[0]}.\n"
         f"The answer is \\boxed{{{gold[0]}}}.", "think"),
        # harmony (gpt-oss): the final channel, one line of sentences
        (f"<|channel|>analysis<|message|>{LONG}<|end|><|start|>assistant<|channel|>final<|message|>"
         f"We add the numbers step by step. So the result is {gold[1]}.<|return|>", "harmony"),
        # no reasoning beyond the answer: only a restatement, or only the answer
        (f"<think>\n{LONG}\n</think>\n\nTom has {gold[2]} apples now. The answer is \\boxed{{{gold[2]}}}.", "think"),
        (f"<|channel|>analysis<|message|>{LONG}<|end|><|start|>assistant<|channel|>final<|message|>"
         f"The answer is {gold[3]}.<|return|>", "harmony"),
    ]
    raws = [raw_record(problem, 0, make_completion(text, style, 5, 50, "stop")) for problem, (text, style) in zip(p, texts)]
    assert all(r["trace"].startswith("Let me think.") for r in raws)  # the reasoning block was split off
    raw_dir = tmp_path / "raw"
    write_raw(raw_dir, raws)
    out = tmp_path / "post_think"
    summary = compress.run(compress_cfg(raw_dir, out, "post_think", policy="drop"))
    total = summary["total"]
    assert summary["balanced"] and total["compressed"] == 2 and total["dropped"] == 2
    assert total["failures"] == {"restates_answer": 1, "no_reasoning": 1}
    got = {r["meta"]["source_id"]: r for r in store.read_records(str(out))}
    think, harmony = got[raws[0]["id"]], got[raws[1]["id"]]
    assert think["trace"] == f"First we combine the two amounts.\nThat gives {gold[0]}.\nThe answer is \\boxed{{{gold[0]}}}."
    assert think["answer"] == f"The answer is \\boxed{{{gold[0]}}}." and think["meta"]["compressor"] == "post_think"
    assert harmony["trace"] == f"We add the numbers step by step.\nSo the result is {gold[1]}."
    assert harmony["answer"] == f"So the result is {gold[1]}."
    assert harmony["meta"]["rho_chars"] == pytest.approx(len(harmony["trace"]) / len(raws[1]["trace"]))
    reasons = {e["id"]: e["reason"] for e in store.read_errors(str(out))}
    assert reasons == {raws[2]["id"]: "restates_answer", raws[3]["id"]: "no_reasoning"}
    # keep_raw: the two without visible reasoning fall back to their raw trace, marked
    kept = compress.run(compress_cfg(raw_dir, tmp_path / "keep", "post_think", policy="keep_raw"))
    assert kept["total"]["fallback_raw"] == 2 and kept["balanced"]
    row = kept["table"][0]  # rho over all inputs counts the fallbacks as 1
    assert row["mean_rho_chars_all"] == pytest.approx((2 * row["mean_rho_chars"] + 2) / 4, abs=1e-3)


def test_post_think_on_the_procedural_teacher_counts_restatements(tmp_path):
    raw_dir = tmp_path / "raw"
    generate.run(load_config(str(ROOT / "configs/traces/generate.py"), {
        "out_dir": str(raw_dir), "problems.synthetic.num": 10, "sampling.n": 1}))
    summary = compress.run(compress_cfg(raw_dir, tmp_path / "pt", "post_think", policy="drop"))
    # "Tom has 7 apples now. The answer is \boxed{7}.": the visible text only restates the answer
    assert summary["total"]["failures"] == {"restates_answer": summary["total"]["inputs"]}


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_gpt_oss_effort_presets_render_the_reasoning_effort(effort):
    from test_data import tokenizer_for

    from jax_distill.engines.vllm_engine import VllmEngine

    preset = "gptoss_vllm" if effort == "high" else f"gptoss_vllm,effort={effort}"
    cfg = config_file(f"{ROOT}/configs/traces/generate.py:{preset}")
    generate.validate(cfg)
    assert cfg.engine.reasoning == "harmony"
    tok = tokenizer_for("harmony")
    messages = generate.messages_for(synthetic.generate(1, seed=0)[0], cfg.prompt)
    # the vLLM engine's own render (chat template + engine.chat_template_kwargs), without loading a model
    engine = SimpleNamespace(tokenizer=tok, chat_kwargs=json.loads(cfg.engine.chat_template_kwargs))
    prompt = tok.decode(VllmEngine.render(engine, messages))
    assert f"Reasoning: {effort}\n" in prompt and prompt.endswith("<|start|>assistant")
    with pytest.raises(ValueError, match="effort"):
        config_file(f"{ROOT}/configs/traces/generate.py:gptoss_vllm,effort=max")


def test_experiment_plans_the_baselines_as_variants(tmp_path, capsys):
    from jax_distill import experiment

    cfg = load_config("configs/experiment/demo.py", {
        "workdir": str(tmp_path), "plan_only": True, "methods": "full",
        "variants": "raw,compressed:shortest_correct,prune_steps:extractive,prune_tokens:extractive"})
    result = experiment.run(cfg)
    assert len(result["runs"]) == 4
    students = tmp_path / "pretrain" / "tiny-qwen3" / "run" / "export" / "hf"  # the grid's (pretrained) student
    for mode in ("steps", "tokens"):
        folder = tmp_path / "traces" / "procedural" / "tiny-qwen3" / f"prune-{mode}-extractive"
        stage = load_config(f"configs/from_json.py:{folder / 'prune_config.json'}")
        assert stage.mode == mode and stage.budget == "match:extractive"
        assert stage.match_dir == str(tmp_path / "traces" / "procedural" / "compressed-extractive")
        assert stage.scorer.model == stage.student_tokenizer == str(students)
        assert stage.chat.template == cfg.train.data.template  # scored in the format the student trains with
        train = load_config(f"configs/from_json.py:{tmp_path}/runs/procedural/tiny-qwen3/full/prune-{mode}-extractive/seed0/train_config.json")
        assert train.data.path == (str(folder),)
    shortest = load_config(f"configs/from_json.py:{tmp_path}/traces/procedural/compressed-shortest_correct/compress_config.json")
    assert shortest.compressor.kind == "shortest_correct"
    plan = capsys.readouterr().out
    assert plan.count("jax_distill.traces.prune ") == 2
    bad = load_config("configs/experiment/demo.py", {"workdir": str(tmp_path / "x"), "variants": "prune_steps"})
    with pytest.raises(Exception, match="unknown variant 'prune_steps'"):
        experiment.validate(bad)


def test_demo_baselines_preset():
    cfg = config_file("configs/experiment/demo.py:baselines")
    assert cfg.teachers.procedural.sampling.n == 2
    assert cfg.variants[-2:] == ("compressed:shortest_correct", "prune_steps:extractive")
    assert config_file("configs/experiment/demo.py").teachers.procedural.sampling.n == 1  # the default unchanged
