"""Trace stages on the procedural teacher: generate -> compress -> truncate end to end, kill + resume,
sharding, failure accounting (empty completions, engine errors, compressors dropping the answer),
reasoning parsers for Qwen thinking and gpt-oss harmony, and the OpenAI-compatible client."""

import glob
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hf_tiny import tokenizer_dir

from jax_distill.cli import load_config
from jax_distill.engines import Completion, SamplingParams
from jax_distill.engines.procedural import ProceduralTeacher
from jax_distill.engines.reasoning import make_completion, split_reasoning
from jax_distill.problems import extract_answer, synthetic
from jax_distill.records import BadRecord
from jax_distill.traces import compress, generate, store, truncate

ROOT = Path(__file__).resolve().parents[1]


def gen_cfg(out, **overrides):
    base = {"out_dir": str(out), "problems.synthetic.num": 30, "sampling.n": 3, "chunk_size": 8}
    return load_config(str(ROOT / "configs/traces/generate.py"), {**base, **overrides})


def strip_time(rec):
    rec = json.loads(json.dumps(rec))
    rec["meta"].pop("time", None)
    return rec


def balanced(total):
    return total["generated"] == total["kept"] + sum(total["rejected"].values()) + sum(total["errors"].values())


# ----------------------------------------------------------------------------- procedural teacher


def test_procedural_teacher_deterministic_verbose_and_wrong_rate():
    problems = synthetic.generate(40, seed=1, steps=3)
    requests = [[{"role": "user", "content": p.question + "\n\nPlease reason step by step."}] for p in problems]
    params = SamplingParams(n=2, max_tokens=5000, seed=0)
    out = ProceduralTeacher(wrong_rate=0.0, detour_rate=1.0).generate(requests, params)
    assert out == ProceduralTeacher(wrong_rate=0.0, detour_rate=1.0).generate(requests, params)
    for p, samples in zip(problems, out):
        for c in samples:
            assert extract_answer(c.answer_text, "number") == p.gold
            assert "Let me redo it" in c.reasoning and p.question.split(".")[1].strip() in c.reasoning
            assert c.text.startswith("<think>") and "</think>" in c.text and c.finish_reason == "stop"
    wrong = ProceduralTeacher(wrong_rate=1.0).generate(requests, params)
    assert all(extract_answer(c.answer_text, "number") != p.gold for p, s in zip(problems, wrong) for c in s)
    some = ProceduralTeacher(wrong_rate=0.3).generate(requests, params)
    n_wrong = sum(extract_answer(c.answer_text, "number") != p.gold for p, s in zip(problems, some) for c in s)
    assert 5 <= n_wrong <= 45
    cut = ProceduralTeacher().generate(requests[:1], SamplingParams(n=1, max_tokens=20))[0][0]
    assert cut.finish_reason == "length" and cut.completion_tokens == 20 and cut.answer_text == ""
    unknown = ProceduralTeacher().generate([[{"role": "user", "content": "Why is the sky blue?"}]], params)[0][0]
    assert extract_answer(unknown.answer_text, "number") is None


# ----------------------------------------------------------------------------- end to end


def test_generate_compress_truncate_end_to_end(tmp_path, capsys):
    tok = str(tokenizer_dir())
    raw_dir, comp_dir, trunc_dir = tmp_path / "raw", tmp_path / "comp", tmp_path / "trunc"
    generate.run(gen_cfg(raw_dir, **{"problems.synthetic.num": 40, "student_tokenizer": tok,
                                     "engine.procedural.wrong_rate": 0.3}))
    assert "generate: " in capsys.readouterr().err  # progress line with rate and ETA
    summary = json.loads((raw_dir / "summary.json").read_text())
    total = summary["total"]
    n_problems = summary["problems"]
    assert total["generated"] == 3 * n_problems and balanced(total) and summary["balanced"]
    assert total["rejected"]["wrong_answer"] > 0 and total["kept"] > n_problems  # verification mattered
    raws = list(store.read_records(str(raw_dir)))
    assert len(raws) == total["kept"] and len({r["id"] for r in raws}) == len(raws)
    from transformers import AutoTokenizer

    student = AutoTokenizer.from_pretrained(tok)
    ntok = lambda s: len(student(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for r in raws[:20]:
        assert r["variant"] == "raw" and r["meta"]["correct"] is True
        assert extract_answer(r["answer"], "number") == r["gold"] and "<think>" not in r["trace"]
        assert r["meta"]["student_tokens"] == ntok(r["trace"]) and r["meta"]["engine"] == "procedural"
        assert r["meta"]["trace_chars"] == len(r["trace"]) and len(r["meta"]["prompt_hash"]) == 64

    ccfg = load_config(str(ROOT / "configs/traces/compress.py"),
                       {"in_dir": str(raw_dir), "out_dir": str(comp_dir), "student_tokenizer": tok, "chunk_size": 16})
    cs = compress.run(ccfg)
    assert cs["total"]["inputs"] == total["kept"] and cs["balanced"]
    comps = {r["meta"]["source_id"]: r for r in store.read_records(str(comp_dir))}
    assert set(comps) == {r["id"] for r in raws}
    row = cs["table"][0]
    assert row["dataset"] == "arith" and row["compressor"] == "extractive" and 0.03 < row["mean_rho_chars"] < 0.5
    assert (comp_dir / "summary.md").read_text().startswith("| dataset | compressor")
    for r in raws[:20]:
        c = comps[r["id"]]
        assert c["variant"] == "compressed" and c["answer"] == r["answer"] and r["gold"] in c["trace"]
        assert c["meta"]["rho_chars"] == pytest.approx(len(c["trace"]) / len(r["trace"]))
        assert c["meta"]["student_tokens"] == ntok(c["trace"])
        assert c["meta"]["rho_tokens"] == pytest.approx(ntok(c["trace"]) / ntok(r["trace"]))

    tcfg = load_config(str(ROOT / "configs/traces/truncate.py"),
                       {"raw_dir": str(raw_dir), "compressed_dir": str(comp_dir), "out_dir": str(trunc_dir),
                        "student_tokenizer": tok})
    ts = truncate.run(tcfg)
    assert ts["total"]["truncated"] + ts["total"]["within_budget"] == len(comps) and ts["balanced"]
    assert ts["total"]["answer_only"] == len(raws)
    outs = list(store.read_records(str(trunc_dir)))
    by_variant = {v: [r for r in outs if r["variant"] == v] for v in ("truncated", "answer_only")}
    raw_by_id = {r["id"]: r for r in raws}
    for t in by_variant["truncated"]:
        raw, comp = raw_by_id[t["meta"]["source_id"]], comps[t["meta"]["source_id"]]
        budget = ntok(comp["trace"])
        assert t["meta"]["budget_tokens"] == budget and ntok(t["trace"]) == t["meta"]["student_tokens"] <= budget
        assert budget - t["meta"]["student_tokens"] <= 2  # cut at a token boundary, not far below
        assert raw["trace"].startswith(t["trace"]) and t["answer"] == raw["answer"]
    assert all(r["trace"] == "" and r["answer"] for r in by_variant["answer_only"])
    # a rerun finds everything finished and changes nothing
    before = sorted(glob.glob(str(comp_dir / "*.jsonl")))
    again = compress.run(ccfg)
    assert again["this_run"] == {} and sorted(glob.glob(str(comp_dir / "*.jsonl"))) == before


def test_truncation_budget_is_counted_in_each_students_own_tokens(tmp_path, capsys):
    """The paper grid's case: compress counts student tokens once (the first student's tokenizer), then
    every student's length-matched truncation must still match the compressed twin in ITS tokens."""
    from transformers import AutoTokenizer

    first, other = str(tokenizer_dir()), str(tokenizer_dir(300))  # 300: few merges, far more tokens per text
    raw_dir, comp_dir = tmp_path / "raw", tmp_path / "comp"
    generate.run(gen_cfg(raw_dir, **{"problems.synthetic.num": 16, "sampling.n": 1}))
    compress.run(load_config(str(ROOT / "configs/traces/compress.py"),
                             {"in_dir": str(raw_dir), "out_dir": str(comp_dir), "student_tokenizer": first}))
    comps = {r["meta"]["source_id"]: r for r in store.read_records(str(comp_dir))}
    assert all(c["meta"]["student_tokenizer"] == first for c in comps.values())
    means = {}
    for tok in (other, first):  # the other student first: its budget is the one today's code got wrong
        student = AutoTokenizer.from_pretrained(tok)
        ntok = lambda s: len(student(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        out = tmp_path / f"trunc-{Path(tok).name}"
        summary = truncate.run(load_config(str(ROOT / "configs/traces/truncate.py"), {
            "raw_dir": str(raw_dir), "compressed_dir": str(comp_dir), "out_dir": str(out), "variants": "truncated",
            "student_tokenizer": tok}))
        assert summary["total"]["truncated"] == len(comps) > 0  # every raw trace is longer than its compressed twin
        budgets, lengths = [], []
        for t in store.read_records(str(out)):
            budget, n = ntok(comps[t["meta"]["source_id"]]["trace"]), ntok(t["trace"])
            assert t["meta"]["budget_tokens"] == budget and t["meta"]["student_tokens"] == n
            assert budget - 1 <= n <= budget, (tok, budget, n)  # within one token at the cut
            budgets.append(budget), lengths.append(n)
        assert summary["mean_budget_tokens"] == pytest.approx(sum(budgets) / len(budgets), abs=1e-3)
        assert summary["mean_truncated_tokens"] == pytest.approx(sum(lengths) / len(lengths), abs=1e-3)
        assert summary["student_tokenizer"] == tok
        printed = capsys.readouterr().out
        assert f"budget vs truncated (mean {tok} tokens): {summary['mean_budget_tokens']} vs " in printed
        means[tok] = summary["mean_budget_tokens"]
    assert means[other] > 1.2 * means[first]  # the tokenizers differ, so must the budgets


def test_generate_kill_and_resume(tmp_path):
    out, ref = tmp_path / "killed", tmp_path / "reference"
    # through the CLI entry point (absl flags, nested overrides), SIGKILLed by its driver at a known point:
    # with 5 chunks finished and the 6th chunk's records written but not its done marker
    cmd = [sys.executable, str(ROOT / "tests/generate_driver.py"), "kill", "5", f"--config={ROOT}/configs/traces/generate.py",
           f"--config.out_dir={out}", "--config.problems.synthetic.num=60", "--config.chunk_size=1",
           "--config.sampling.n=2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    assert not (out / "summary.json").exists()
    assert len(glob.glob(str(out / "*.done.json"))) == 5
    assert len(glob.glob(str(out / "*.jsonl"))) == len(glob.glob(str(out / "errors/*.jsonl"))) == 6
    files = glob.glob(str(out / "*.jsonl")) + glob.glob(str(out / "errors/*.jsonl"))
    finished_before = {p: Path(p).read_bytes() for p in files
                       if (out / Path(p).name.replace(".jsonl", ".done.json")).exists()}
    assert len(finished_before) == 2 * 5
    done_before, _ = store.finished(str(out))
    assert len(done_before) == 5

    overrides = {"problems.synthetic.num": 60, "chunk_size": 20, "sampling.n": 2}
    resumed = generate.run(gen_cfg(out, **overrides))
    assert resumed["skipped_finished"] == len(done_before) and balanced(resumed["total"])
    for path, data in finished_before.items():  # finished chunks untouched
        assert Path(path).read_bytes() == data
    assert not glob.glob(str(out / "*.tmp*")) and not glob.glob(str(out / "errors/*.tmp*"))
    reference = generate.run(gen_cfg(ref, **overrides))
    got = [strip_time(r) for r in store.read_records(str(out))]
    want = [strip_time(r) for r in store.read_records(str(ref))]
    assert len({r["id"] for r in got}) == len(got)  # no duplicates
    assert sorted(got, key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])  # none missing, identical
    done_after, _ = store.finished(str(out))
    assert done_after == store.finished(str(ref))[0] and resumed["total"] == reference["total"]


def test_shards_partition_the_problems(tmp_path):
    # another host's chunk in flight (records renamed into place, done marker not yet written) and a
    # leftover of this host's killed run: only this host's own partial files are cleaned
    other = tmp_path / "generate-shard001of003-00000.jsonl"
    own = tmp_path / "generate-shard000of003-00007.jsonl"
    tmp_path.joinpath("generate-shard000of003-00008.done.json.tmp123").write_text("{")
    other.write_text("")
    own.write_text("")
    generate.run(gen_cfg(tmp_path, shard="0/3", **{"problems.synthetic.num": 40}))
    assert other.exists() and not own.exists() and not glob.glob(str(tmp_path / "*.tmp*"))
    other.unlink()
    ids = []
    for i in range(3):
        s = generate.run(gen_cfg(tmp_path, shard=f"{i}/3", **{"problems.synthetic.num": 40}))
        ids.append(s["problems_in_shard"])
    done, infos = store.finished(str(tmp_path))
    train, _ = generate.load_problems_with_report(gen_cfg(tmp_path, **{"problems.synthetic.num": 40}).problems)[:2], None
    assert sum(ids) == len(train[0]) == len(done) and all(n > 0 for n in ids)
    assert sorted(os.path.basename(p)[:23] for p in glob.glob(str(tmp_path / "*.done.json")))[0].startswith("generate-shard000of003")
    with pytest.raises(ValueError, match="i/n"):
        generate.run(gen_cfg(tmp_path, shard="3/3"))


# ----------------------------------------------------------------------------- failure accounting


class FlakyEngine:
    """Empty text for some problems, one request batch raising, otherwise the procedural teacher."""

    name, model, tokenizer = "flaky", "flaky-1", None

    def __init__(self):
        self.teacher = ProceduralTeacher(wrong_rate=0.0)
        self.calls = 0

    def count_tokens(self, text):
        return self.teacher.count_tokens(text)

    def generate(self, requests, params):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        out = self.teacher.generate(requests, params)
        for i, samples in enumerate(out):
            if i % 3 == 0:
                samples[0] = Completion("", "", "", 10, 0, "stop")
        return out


def test_empty_completions_and_engine_errors_are_counted(tmp_path):
    s = generate.run(gen_cfg(tmp_path, **{"sampling.n": 2, "chunk_size": 5, "problems.synthetic.num": 30}),
                     engine=FlakyEngine())
    total = s["total"]
    assert balanced(total)
    assert total["errors"]["engine_error"] == 5 * 2  # the whole second chunk
    assert total["errors"]["empty_completion"] > 0
    errors = store.read_errors(str(tmp_path))
    assert sum(e["reason"] == "empty_completion" for e in errors) == total["errors"]["empty_completion"]
    assert any("CUDA out of memory" in e["detail"] for e in errors if e["reason"] == "engine_error")
    assert len(list(store.read_records(str(tmp_path)))) == total["kept"]


class CompressorEngine:
    """A fake compressor model: keeps the first line of the trace (the answer is gone), or states a
    wrong answer, or returns the right short text on the second attempt, or (every_third) fails on every
    attempt for every third trace (by length) and is right on the others."""

    name, model, tokenizer = "fake-compressor", "fake-compressor", None

    def __init__(self, mode):
        self.mode = mode

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, requests, params):
        out = []
        for messages in requests:
            prompt = messages[-1]["content"]
            trace = prompt.split("Reasoning:\n", 1)[1].split("\n\nFinal answer:", 1)[0]
            answer = prompt.rsplit("\\boxed{", 1)[1].split("}", 1)[0]
            if self.mode == "drop_answer":
                text = trace.splitlines()[0]
            elif self.mode == "every_third":
                text = trace.splitlines()[0] if len(trace) % 3 == 0 else f"So the answer is {answer}."
            elif self.mode == "wrong":
                text = f"Short. The answer is {int(answer) + 1}."
            else:  # right on retries only
                text = trace.splitlines()[0] if params.seed == 0 else f"Short. The answer is {answer}."
            out.append([make_completion(text, "none", 10, 5, "stop")])
        return out


@pytest.mark.parametrize("mode,policy,expect", [
    ("drop_answer", "keep_raw", {"fallback_raw": "all", "failures": "answer_missing"}),
    ("drop_answer", "drop", {"dropped": "all", "failures": "answer_missing"}),
    ("wrong", "keep_raw", {"fallback_raw": "all", "failures": "answer_mismatch"}),
    ("retry_ok", "retry", {"compressed": "all"}),
])
def test_compressor_failures_follow_policy(tmp_path, mode, policy, expect):
    raw = tmp_path / "raw"
    generate.run(gen_cfg(raw, **{"problems.synthetic.num": 12, "sampling.n": 1,
                                 "engine.procedural.wrong_rate": 0.0}))
    n = len(list(store.read_records(str(raw))))
    cfg = load_config(str(ROOT / "configs/traces/compress.py"),
                      {"in_dir": str(raw), "out_dir": str(tmp_path / "comp"), "compressor.kind": "engine",
                       "policy": policy, "retries": 1})
    s = compress.run(cfg, engine=CompressorEngine(mode))
    total = s["total"]
    assert s["balanced"] and total["inputs"] == n
    for bucket in ("compressed", "fallback_raw", "dropped"):
        assert total[bucket] == (n if expect.get(bucket) == "all" else 0), bucket
    if "failures" in expect:
        assert total["failures"] == {expect["failures"]: n}
        errors = store.read_errors(str(tmp_path / "comp"))
        assert {e["reason"] for e in errors} == {expect["failures"]}
    recs = list(store.read_records(str(tmp_path / "comp")))
    assert len(recs) == n - total["dropped"]
    if policy == "keep_raw":
        assert all(r["meta"]["fallback"] == "raw" and r["meta"]["failure"] == expect["failures"] for r in recs)
    if mode == "retry_ok":
        assert total["failed_attempts"] == {"answer_missing": n} and all(r["meta"]["attempts"] == 2 for r in recs)
        assert s["table"][0]["compressor"] == "fake-compressor"


def test_record_reader_names_file_and_line(tmp_path):
    d = tmp_path / "recs"
    d.mkdir()
    good = store.make_record(id="p/s0", problem={"problem_id": "p", "dataset": "d", "question": "q", "gold": "1",
                                                 "answer_type": "number"}, answer="The answer is 1.", trace="t",
                             variant="raw", meta={})
    bad = dict(good, id="p/s1", trace=5)
    store.write_chunk(str(d), "x", 0, [good, bad], [], {"ids": ["p"], "counts": {}})
    with pytest.raises(BadRecord, match=r"x-00000.jsonl:2: wrong_type \(trace\): record 'p/s1' field 'trace' "
                                        r"must be str"):
        list(store.read_records(str(d)))


# ----------------------------------------------------------------------------- reasoning parsers


@pytest.mark.parametrize("text,reasoning,answer", [
    ("<think>\nadd 2 and 3\n</think>\n\nThe answer is 5.<|im_end|>", "add 2 and 3", "The answer is 5."),
    ("add 2 and 3\n</think>\n\nThe answer is 5.", "add 2 and 3", "The answer is 5."),  # template opened it
    ("<think>\nstill thinking about", "still thinking about", ""),                      # cut off
    ("The answer is 5.", "", "The answer is 5."),                                         # no thinking
])
def test_split_qwen_think(text, reasoning, answer):
    assert split_reasoning(text, "think") == (reasoning, answer)


def test_split_harmony():
    text = ("<|channel|>analysis<|message|>We need 2+3. That's 5.<|end|>"
            "<|start|>assistant<|channel|>commentary to=functions.calc <|constrain|>json<|message|>{\"x\": 1}<|call|>"
            "<|start|>assistant<|channel|>final<|message|>The answer is \\boxed{5}.<|return|>")
    reasoning, answer = split_reasoning(text, "harmony")
    assert reasoning == "We need 2+3. That's 5.\n\n{\"x\": 1}" and answer == "The answer is \\boxed{5}."
    cut = "<|channel|>analysis<|message|>We need 2+3, so"
    assert split_reasoning(cut, "harmony") == ("We need 2+3, so", "")


def test_length_cut_thinking_output_is_all_reasoning():
    c = make_completion("some thoughts without close", "think", 3, 7, "length")
    assert (c.reasoning, c.answer_text) == ("some thoughts without close", "")


# ----------------------------------------------------------------------------- OpenAI-compatible client


def _openai_fake_server(bodies: list):
    """A local stand-in for a vLLM server's chat endpoint: records each request body and answers with
    n choices carrying the seed they were given (vLLM gives choice k seed + k) and their token ids."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append((self.path, self.headers.get("Authorization"), body))
            q = body["messages"][-1]["content"]
            if "slow" in q:  # the client gives up first; answer nothing
                time.sleep(1.0)
                return
            choices = []
            for k in range(body["n"]):
                if "server-parsed" in q:
                    message = {"content": "It is 5.", "reasoning_content": "2 plus 3 is 5"}
                else:
                    message = {"content": f"<think>seed {body['seed'] + k}</think>The answer is 5."}
                choices.append({"index": k, "message": message, "finish_reason": "stop",
                                "token_ids": list(range(7 + k))})
            if "rejected" in q:
                status, data = 400, {"error": {"message": "prompt too long", "code": 400}}
            else:
                status, data = 200, {"choices": choices[::-1], "usage": {"prompt_tokens": 11}}
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_openai_client_against_a_local_server():
    from jax_distill.engines.vllm_engine import OpenAIEngine

    bodies = []
    server = _openai_fake_server(bodies)
    try:
        eng = OpenAIEngine(f"http://127.0.0.1:{server.server_port}/v1", "teacher", "think",
                           '{"enable_thinking": true}', api_key="k", concurrency=2)
        out = eng.generate([[{"role": "user", "content": "2+3?"}], [{"role": "user", "content": "server-parsed"}],
                            [{"role": "user", "content": "rejected"}]],
                           SamplingParams(n=2, temperature=0.6, top_k=20, max_tokens=64, seed=1))
        slow = OpenAIEngine(f"http://127.0.0.1:{server.server_port}/v1", "teacher", timeout_s=0.2)
        with pytest.raises(RuntimeError, match=r"/v1/chat/completions: no response within 0.2s"):
            slow.generate([[{"role": "user", "content": "slow"}]], SamplingParams(n=1, max_tokens=4))
    finally:
        server.shutdown()
    assert len(bodies) == 4 and all(p == "/v1/chat/completions" and a == "Bearer k" for p, a, _ in bodies[:3])
    b = next(body for _, _, body in bodies if body["messages"][-1]["content"] == "2+3?")
    assert b["n"] == 2 and b["top_k"] == 20 and b["chat_template_kwargs"] == {"enable_thinking": True}
    assert b["model"] == "teacher" and b["max_tokens"] == 64 and b["return_token_ids"] is True
    first = out[0]
    assert [c.answer_text for c in first] == ["The answer is 5."] * 2
    assert [c.reasoning for c in first] == [f"seed {b['seed']}", f"seed {b['seed'] + 1}"]  # in index order
    assert out[1][0].reasoning == "2 plus 3 is 5" and out[1][0].answer_text == "It is 5."
    assert [c.completion_tokens for c in first] == [7, 8] and all(c.prompt_tokens == 11 for c in first)
    # the rejected request is an error per sample, with the server's message; the others are unharmed
    assert [c.finish_reason[:15] for c in out[2]] == ["error:http_400:"] * 2 and "prompt too long" in out[2][0].finish_reason


def test_openai_generate_records_the_seed_sent(tmp_path):
    """The record's meta.seed is the seed the server was sent for that sample's request (it was the
    stage's own derivation, while the client sent another per sample)."""
    bodies = []
    server = _openai_fake_server(bodies)
    try:
        summary = generate.run(gen_cfg(tmp_path, **{
            "problems.synthetic.num": 3, "sampling.n": 2, "keep": "all", "engine.kind": "openai",
            "engine.model": "teacher", "engine.openai.base_url": f"http://127.0.0.1:{server.server_port}/v1",
            "engine.openai.startup_timeout_s": 0.0}))
    finally:
        server.shutdown()
    assert summary["total"]["generated"] == 2 * summary["problems"] > 0
    sent = {json.dumps(b["messages"], sort_keys=True): b["seed"] for _, _, b in bodies}
    cfg = gen_cfg(tmp_path, **{"problems.synthetic.num": 3})
    problems = {p.id: p for p in generate.load_problems_with_report(cfg.problems)[0]}
    records = list(store.read_records(str(tmp_path)))
    assert len(records) == summary["total"]["generated"] and len(sent) == summary["problems"]
    for r in records:
        messages = generate.messages_for(problems[r["problem_id"]], cfg.prompt)
        assert r["meta"]["seed"] == sent[json.dumps(messages, sort_keys=True)]


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("stage,fields,error", [
    ("generate", {"keep": "best"}, r"config\.keep: must be one of all_correct"),
    ("generate", {"shard": "2/2"}, r"config\.shard: must look like 'i/n'"),
    ("generate", {"chunk_size": 0}, r"config\.chunk_size: must be >= 1"),
    ("generate", {"problems.sources": ("synthetic", "hub")}, r"config\.problems\.sources: unknown \['hub'\]"),
    ("generate", {"problems.synthetic.ops": ("add", "pow")}, r"config\.problems\.synthetic\.ops: unknown \['pow'\]"),
    ("generate", {"problems.sources": ("local",)}, r"config\.problems\.local\.paths: must name a file"),
    ("generate", {"sampling.top_p": 0.0}, r"config\.sampling\.top_p: must be > 0"),
    ("generate", {"engine.kind": "vllm"}, r"config\.engine\.model: must name the model folder"),
    ("generate", {"prompt.template": "no slot"}, r"config\.prompt\.template: must contain \{question\}"),
    ("compress", {"in_dir": "/no/such/dir"}, r"config\.in_dir: raw trace directory '/no/such/dir' does not exist"),
    ("compress", {"compressor.sampling.n": 2}, r"config\.compressor\.sampling\.n: must be 1"),
    ("compress", {"compressor.kind": "engine", "compressor.engine.kind": "openai"},
     r"config\.compressor\.engine\.openai\.base_url: is required"),
    ("compress", {"policy": "retry_forever"}, r"config\.policy: must be one of keep_raw"),
    ("truncate", {"variants": ("truncated", "cut")}, r"config\.variants: must name some of truncated, answer_only"),
    ("truncate", {"student_tokenizer": ""}, r"config\.student_tokenizer: must name the student's tokenizer"),
    ("stats", {"path": "/no/such/dir"}, r"config\.path: trace directory or JSONL file '/no/such/dir' does not exist"),
])
def test_validate_names_the_field(tmp_path, stage, fields, error):
    from jax_distill import checks
    from jax_distill.traces import stats

    module = {"generate": generate, "compress": compress, "truncate": truncate, "stats": stats}[stage]
    base = {"generate": {}, "compress": {"in_dir": str(tmp_path)},
            "truncate": {"raw_dir": str(tmp_path), "compressed_dir": str(tmp_path), "student_tokenizer": str(tmp_path)},
            "stats": {"path": str(tmp_path)}}[stage]
    cfg = load_config(str(ROOT / f"configs/traces/{stage}.py"), {**base, "out_dir": str(tmp_path / "out")} if
                      stage != "stats" else base)
    module.validate(cfg)  # the base is valid
    for dotted, value in fields.items():
        cfg.unlock()
        node = cfg
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    with pytest.raises(checks.ConfigError, match=error):
        module.run(cfg)
    assert not (tmp_path / "out").exists()  # nothing written before the config is checked


def test_cli_rejects_an_undeclared_field(tmp_path):
    config = tmp_path / "typo.py"
    config.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                      f"from configs.traces.compress import get_config as base\n\n"
                      "def get_config():\n    c = base()\n    c.compressor.temperature = 0.3\n    return c\n")
    proc = subprocess.run([sys.executable, "-m", "jax_distill.traces.compress", f"--config={config}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "config.compressor.temperature" in proc.stderr
