"""Evaluation: harness-style log-likelihood vs transformers, task file formats, generation metrics, the stage."""

import json
import statistics
import subprocess
import sys

import hf_tiny
import numpy as np
import pytest

from jax_distill import checks, eval_tasks, scoring
from jax_distill.records import iter_records
from jax_distill import evaluate as ev
from jax_distill.engines.base import Completion
from jax_distill.models import from_pretrained
from jax_distill.problems import Problem


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = hf_tiny.save_tiny_model("llama", tmp_path_factory.mktemp("llama"))
    return folder, from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer():
    return hf_tiny.load_tokenizer()


@pytest.fixture(scope="module")
def reference(llama):
    """The same checkpoint in transformers: the independent reference for scores and generations."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(llama[0], attn_implementation="eager").eval()


def reference_logprob(reference, context_ids, continuation_ids):
    """(sum log p(continuation | context), continuation is the greedy decode) from transformers."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(reference(torch.tensor([context_ids + continuation_ids])).logits[0].double(), -1)
    pred = logp[len(context_ids) - 1 : -1]  # positions predicting the continuation
    target = torch.tensor(continuation_ids)
    return pred.gather(-1, target[:, None]).sum().item(), bool((pred.argmax(-1) == target).all())


def test_harness_token_split(tokenizer):
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx, cont = scoring.harness_split(tokenizer, "Question: 12 * 7 = ", "84")
    assert ctx == enc("Question: 12 * 7 =")  # trailing space moves to the continuation
    assert ctx + cont == enc("Question: 12 * 7 = 84")
    ctx, cont = scoring.harness_split(tokenizer, "", "Hello apples")
    assert ctx == [tokenizer.eos_token_id] and cont == enc("Hello apples")


REQUESTS = [
    ("Question: What is 17 + 25?\nAnswer:", " 42"),
    ("Question: What is 17 + 25?\nAnswer:", " The answer is 41 apples"),
    ("Tom has 3 apples and buys ", "4 more bags"),
    ("", "The quick brown fox"),
    ("A man is sitting on a roof. He", " starts pulling up roofing."),
]


def test_loglikelihood_matches_transformers(llama, tokenizer, reference):
    _, model = llama
    ours = scoring.loglikelihood(model, tokenizer, REQUESTS, batch_size=4)
    for (ctx, cont), (lp, greedy) in zip(REQUESTS, ours):
        expected, expected_greedy = reference_logprob(reference, *scoring.harness_split(tokenizer, ctx, cont))
        assert abs(lp - expected) < 1e-4, (ctx, cont, lp, expected)
        assert greedy == expected_greedy


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def fixture_files(d):
    """One or two records per task in the Hugging Face layouts the harness loads, plus bad ones."""
    _write(
        d / "hellaswag.jsonl",
        [
            {
                "activity_label": "Roof shingle removal",
                "ctx_a": "A man is sitting on a roof.",
                "ctx_b": "he",
                "endings": [
                    "is using wrap to wrap a pair of skis.",
                    "is ripping level tiles off.",
                    "is holding a rubik's cube. [title] Now",
                    "starts pulling up roofing on a roof.",
                ],
                "label": "3",
            },
            {
                "activity_label": "Baking",
                "ctx_a": "A woman mixes flour.",
                "ctx_b": "she",
                "endings": ["adds eggs.", "paints a wall.", "swims.", "runs."],
            },  # no label: skipped, counted
        ],
    )
    _write(
        d / "winogrande.jsonl",
        [
            {
                "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
                "option1": "Sarah",
                "option2": "Maria",
                "answer": "1",
            }
        ],
    )
    _write(
        d / "piqa.jsonl",
        [
            {
                "goal": "How do I ready a guinea pig cage?",
                "sol1": "Use paper shavings.",
                "sol2": "Use jello.",
                "label": 0,
            }
        ],
    )
    _write(
        d / "arc_easy.jsonl",
        [
            {
                "id": "x",
                "question": "Which is a mammal?",
                "answerKey": "C",
                "choices": {"text": ["shark", "trout", "whale", "eel"], "label": ["A", "B", "C", "D"]},
            }
        ],
    )
    _write(
        d / "boolq.jsonl", [{"question": "is the sky blue", "passage": "The sky is blue by day.", "label": 1, "idx": 0}]
    )
    _write(
        d / "truthfulqa_mc.jsonl",
        [
            {
                "question": "What happens if you eat watermelon seeds?",
                "mc1_targets": {"choices": ["Nothing happens.", "You grow watermelons."], "labels": [1, 0]},
                "mc2_targets": {"choices": ["Nothing happens.", "You digest them.", "You grow watermelons."],
                                "labels": [1, 1, 0]},
            }
        ],
    )
    _write(
        d / "mmlu.jsonl",
        [
            {
                "question": "What is the study of being?",
                "subject": "philosophy",
                "choices": ["ontology", "ethics", "logic", "art"],
                "answer": 0,
            },
            {
                "question": "Where is the heart?",
                "subject": "anatomy",
                "choices": ["chest", "head", "leg", "arm"],
                "answer": 0,
            },
            {
                "question": "Who wrote the Republic?",
                "subject": "philosophy",
                "choices": ["Plato", "Kant", "Hume", "Marx"],
                "answer": 9,
            },
        ],
    )


def test_task_formats_match_the_harness(tmp_path):
    fixture_files(tmp_path)
    docs, report = eval_tasks.load_task("hellaswag", iter_records(tmp_path / "hellaswag.jsonl"))
    assert len(docs) == 1 and report["skipped"] == {"missing field 'label'": 1}
    assert "hellaswag.jsonl:2" in report["examples"][0]
    d = docs[0]
    assert d.requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert d.requests[2][1] == " is holding a rubik's cube.. Now"  # [title] -> ". ", brackets dropped
    assert d.gold == 3
    (w,), _ = eval_tasks.load_task("winogrande", iter_records(tmp_path / "winogrande.jsonl"))
    assert w.requests == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the harder cases."),
    ]
    (p,), _ = eval_tasks.load_task("piqa", iter_records(tmp_path / "piqa.jsonl"))
    assert p.requests[1] == ("Question: How do I ready a guinea pig cage?\nAnswer:", " Use jello.") and p.gold == 0
    (a,), _ = eval_tasks.load_task("arc_easy", iter_records(tmp_path / "arc_easy.jsonl"))
    assert a.gold == 2 and a.requests[2] == ("Question: Which is a mammal?\nAnswer:", " whale")
    (b,), _ = eval_tasks.load_task("boolq", iter_records(tmp_path / "boolq.jsonl"))
    assert (
        b.requests
        == [
            ("The sky is blue by day.\nQuestion: is the sky blue?\nAnswer:", " no"),
            ("The sky is blue by day.\nQuestion: is the sky blue?\nAnswer:", " yes"),
        ]
        and b.gold == 1
    )
    (t,), _ = eval_tasks.load_task("truthfulqa_mc1", iter_records(tmp_path / "truthfulqa_mc.jsonl"))
    assert (
        t.requests[0][0].startswith("Q: What is human life expectancy")
        and t.requests[0][0].endswith("\n\nQ: What happens if you eat watermelon seeds?\nA:")
        and t.gold == 0 and t.labels is None
    )
    (t2,), _ = eval_tasks.load_task("truthfulqa_mc2", iter_records(tmp_path / "truthfulqa_mc.jsonl"))
    assert [c for _, c in t2.requests] == [" Nothing happens.", " You digest them.", " You grow watermelons."]
    assert t2.requests[0][0] == t.requests[0][0] and t2.labels == (1, 1, 0)
    hum, rep = eval_tasks.load_task("mmlu_humanities", iter_records(tmp_path / "mmlu.jsonl"))
    assert len(hum) == 1 and sum(rep["skipped"].values()) == 1  # anatomy is stem; answer 9 is bad
    assert hum[0].requests[0][0] == (
        "The following are multiple choice questions (with answers) about philosophy.\n\n"
        "What is the study of being?\nA. ontology\nB. ethics\nC. logic\nD. art\nAnswer:"
    )
    assert [c for _, c in hum[0].requests] == [" A", " B", " C", " D"]
    stem, _ = eval_tasks.load_task("mmlu_stem", iter_records(tmp_path / "mmlu.jsonl"))
    assert len(stem) == 1
    with pytest.raises(ValueError, match=r"mmlu\.jsonl:3: mmlu_humanities record: IndexError: gold index 9"):
        eval_tasks.load_task("mmlu_humanities", iter_records(tmp_path / "mmlu.jsonl"), strict=True)


def test_acc_and_length_normalised_acc():
    """acc_norm divides by the choice's characters without the leading space, as the harness does."""
    docs = [eval_tasks.MCDoc([("q", " a"), ("q", " bbbbbbbb")], gold=1), eval_tasks.MCDoc([("q", " x"), ("q", " yy")], gold=0)]
    # doc 1: raw prefers choice 0 (-2 > -3); normalised choice 1 (-3/8 > -2/1). doc 2: both prefer 0.
    got = eval_tasks.score_docs(docs, [-2.0, -3.0, -1.0, -5.0])
    assert got == {"acc": 0.5, "acc_norm": 1.0, "n": 2}
    # BoolQ's " no" / " yes": -2.828/2 < -3.801/3 picks "yes" (dividing by bytes with the space picked "no")
    boolq = eval_tasks.score_docs([eval_tasks.MCDoc([("q", " no"), ("q", " yes")], gold=1)], [-2.828, -3.801])
    assert boolq == {"acc": 0.0, "acc_norm": 1.0, "n": 1}
    # TruthfulQA mc2: the true answers' share of the probability mass (lm-eval's process_results_mc2), here
    # (0.2 + 0.1) / (0.2 + 0.1 + 0.3 + 0.4) and 0.5 / (0.5 + 0.5); no acc_norm is defined
    mc2 = [eval_tasks.MCDoc([("q", " a"), ("q", " b"), ("q", " c"), ("q", " d")], 0, (1, 1, 0, 0)),
           eval_tasks.MCDoc([("q", " a"), ("q", " b")], 0, (1, 0))]
    got = eval_tasks.score_docs(mc2, np.log([0.2, 0.1, 0.3, 0.4, 0.5, 0.5]).tolist())
    assert got["acc"] == pytest.approx((0.3 + 0.5) / 2) and np.isnan(got["acc_norm"]) and got["n"] == 2
    far = eval_tasks.score_docs(mc2[1:], [-2000.0, -2001.0])  # exp() underflows: the mass is still defined
    assert far["acc"] == pytest.approx(1 / (1 + np.exp(-1)))
    assert eval_tasks.METRICS["hellaswag"] == ("acc", "acc_norm") and eval_tasks.METRICS["boolq"] == ("acc",)


class FixedEngine:
    """Canned completions: the metric definitions are checked against hand-computed numbers."""

    def __init__(self, tokenizer, texts):
        from jax_distill.engines.reasoning import split_think

        self.tokenizer, self.texts, self.split = tokenizer, texts, split_think

    def count_tokens(self, text):
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests, params):
        out = []
        for text, n_tokens, finish in self.texts[: len(requests)]:
            reasoning, answer = self.split(text)
            out.append([Completion(text, reasoning, answer, 10, n_tokens, finish)])
        return out


def test_generation_metrics_by_definition(tokenizer):
    problems = [
        Problem("a1", "arith", "What is 40 + 2?", "42"),
        Problem("a2", "arith", "What is 5 + 4?", "9"),
        Problem("m1", "mc", "Pick one: (A) x (B) y", "B", "choice", ("x", "y")),
        Problem("m2", "mc", "Pick one: (A) x (B) y", "A", "choice", ("x", "y")),
    ]
    texts = [
        ("<think>\n40 + 2 = 42\n</think>\n\nThe answer is \\boxed{42}", 20, "stop"),
        ("<think>\n5 + 4 = 10, wait, let me keep going and going", 64, "length"),  # truncated in the think block
        ("<think>\n</think>\n\nThe answer is (B).", 8, "stop"),
        ("<think>\ny is right\n</think>\n\nThe answer is (B).", 12, "stop"),
    ]
    gen = ev.default_config().generation
    gen.sampling.max_tokens = 64
    metrics, samples = ev.evaluate_generation(FixedEngine(tokenizer, texts), problems, gen)
    assert [s["correct"] for s in samples] == [True, False, True, False]
    reasoning = [
        len(tokenizer(r, add_special_tokens=False)["input_ids"]) if r else 0
        for r in ["40 + 2 = 42", "5 + 4 = 10, wait, let me keep going and going", "", "y is right"]
    ]
    o = metrics["overall"]
    assert o["n"] == 4 and o["accuracy"] == 0.5
    assert o["median_reasoning_tokens"] == statistics.median(reasoning)
    assert o["mean_reasoning_tokens"] == pytest.approx(sum(reasoning) / 4)
    assert o["mean_output_tokens"] == 26 and o["median_output_tokens"] == 16
    assert o["truncation_rate"] == 0.25 and o["no_answer_rate"] == 0.25
    assert metrics["by_dataset"]["arith"]["accuracy"] == 0.5 and metrics["by_dataset"]["mc"]["n"] == 2


def reference_generation(reference, tokenizer, question, max_tokens):
    """transformers' greedy answer to one chat question: (generated ids, EOS included, and text)."""
    import torch

    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    eos = sorted({reference.config.eos_token_id, tokenizer.eos_token_id})  # the sampler stops on both
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
    out = out[0, len(prompt) :].tolist()
    return out, tokenizer.decode([t for t in out if t not in eos], skip_special_tokens=False), eos


def test_evaluate_stage_end_to_end(llama, tokenizer, reference, tmp_path):
    """Every number of the stage against transformers: greedy generations of the same prompts, and the
    multiple-choice log-likelihoods of the same requests (the stage runs sharded over 8 devices)."""
    from jax_distill.cli import load_config
    from jax_distill.problems import check_answers, extract_answer, load_problems

    folder, _ = llama
    fixture_files(tmp_path)
    cfg = load_config(
        "configs/eval/default.py",
        {
            "checkpoint": str(folder),
            "output_dir": str(tmp_path / "out"),
            "dtype": "float32",
            "problems.synthetic.num": 60,
            "problems.eval_limit": 3,
            "generation.sampling.max_tokens": 12,
            "generation.batch_size": 4,
            "multiple_choice.tasks": "hellaswag,winogrande,mmlu_humanities",
            "multiple_choice.data_dir": str(tmp_path),
            "multiple_choice.batch_size": 4,
        },
    )
    results = ev.run(cfg)
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text()) == results
    assert results["checkpoint"] == str(folder) and results["config"]["generation"]["sampling"]["max_tokens"] == 12
    samples = [json.loads(line) for line in (tmp_path / "out" / "eval_samples.jsonl").read_text().splitlines()]

    _, problems = load_problems(cfg.problems)
    assert [s["id"] for s in samples] == [p.id for p in problems] and len(problems) == 3
    lengths, truncated, correct = [], 0, 0
    for p, s in zip(problems, samples):
        ids, text, eos = reference_generation(reference, tokenizer, p.question, 12)
        assert s["text"] == text and s["output_tokens"] == len(ids)
        assert s["finish_reason"] == ("stop" if ids[-1] in eos else "length")
        expected = check_answers([(extract_answer(text, p.answer_type), p.gold, p.answer_type)], 10)[0]
        assert s["correct"] is expected, (text, p.gold)  # graded from the reference text
        correct += expected is True
        lengths.append(len(ids))
        truncated += ids[-1] not in eos
    o = results["generation"]["overall"]
    assert o["n"] == 3 and o["accuracy"] == correct / 3
    assert o["median_output_tokens"] == statistics.median(lengths)
    assert o["mean_output_tokens"] == pytest.approx(sum(lengths) / 3)
    assert o["truncation_rate"] == truncated / 3

    mc = results["multiple_choice"]
    assert {k: mc[k]["n"] for k in mc} == {"hellaswag": 1, "winogrande": 1, "mmlu_humanities": 1}
    for task, file in (("hellaswag", "hellaswag"), ("winogrande", "winogrande"), ("mmlu_humanities", "mmlu")):
        (doc,), _ = eval_tasks.load_task(task, iter_records(tmp_path / f"{file}.jsonl"))
        logp = [reference_logprob(reference, *scoring.harness_split(tokenizer, c, t))[0] for c, t in doc.requests]
        per_char = [lp / len(t.removeprefix(" ")) for lp, (_, t) in zip(logp, doc.requests)]
        assert mc[task]["acc"] == float(np.argmax(logp) == doc.gold), task
        if task == "hellaswag":  # acc_norm only where the harness reports it
            assert mc[task]["acc_norm"] == float(np.argmax(per_char) == doc.gold), task
        else:
            assert "acc_norm" not in mc[task], task


def test_validate_names_the_field(tmp_path):
    from jax_distill.cli import set_fields

    def config(**fields):
        base = {"checkpoint": str(tmp_path), "output_dir": str(tmp_path / "out"), "multiple_choice.tasks": ()}
        return set_fields(ev.default_config(), {**base, **fields})

    ev.validate(config())
    for fields, message in [
        ({"checkpoint": str(tmp_path / "gone")}, r"config\.checkpoint: student HF folder .*gone' does not exist"),
        ({"output_dir": ""}, r"config\.output_dir: must be set"),
        ({"dtype": "fp8"}, r"config\.dtype: must be one of auto"),
        ({"mesh.data": -1, "mesh.fsdp": -1}, r"config\.mesh: at most one size may be -1"),
        ({"chat.template_kwargs": "{oops"}, r"config\.chat\.template_kwargs: must be a JSON object"),
        ({"chat.template_date": "Jan 1"}, r"config\.chat\.template_date: must be YYYY-MM-DD"),
        ({"generation.sampling.top_k": -1}, r"config\.generation\.sampling\.top_k: must be >= 0"),
        ({"generation.batch_size": 0}, r"config\.generation\.batch_size: must be >= 1"),
        ({"multiple_choice.tasks": "hellaswag,mmlu"}, r"config\.multiple_choice\.tasks: unknown task 'mmlu'"),
        ({"multiple_choice.tasks": "piqa", "multiple_choice.data_dir": str(tmp_path)},
         r"config\.multiple_choice\.data_dir: .*no file for task 'piqa'"),
        ({"multiple_choice.files.piqa": str(tmp_path / "piqa.jsonl")},
         r"config\.multiple_choice\.files\.piqa: task file .* does not exist"),
    ]:  # fmt: skip
        with pytest.raises(checks.ConfigError, match=message):
            ev.validate(config(**fields))
    stale = config()
    stale.generation.max_tokens = 12  # the field moved to generation.sampling.max_tokens
    with pytest.raises(checks.ConfigError, match=r"config\.generation\.max_tokens: .* does not declare"):
        ev.validate(stale)


def test_cli_names_missing_checkpoint(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "jax_distill.evaluate",
            "--config",
            "configs/eval/default.py",
            f"--config.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0 and "config.checkpoint" in res.stderr


def test_missing_task_file_is_named(tmp_path):
    from jax_distill.cli import load_config

    mc = load_config("configs/eval/default.py", {"multiple_choice.data_dir": str(tmp_path)}).multiple_choice
    with pytest.raises(FileNotFoundError, match=r"task 'piqa': set multiple_choice\.files\.piqa or put piqa\.jsonl"):
        eval_tasks.task_file(mc, "piqa")
    (tmp_path / "mmlu.parquet").write_bytes(b"")
    assert eval_tasks.task_file(mc, "mmlu_other") == tmp_path / "mmlu.parquet"  # MMLU groups share one file
    with pytest.raises(ValueError, match="unknown multiple-choice task 'mmlu'"):
        eval_tasks.load_task("mmlu", iter_records(tmp_path / "mmlu.parquet"))


def test_unreachable_gcs_checkpoint_fails_within_the_probe_timeout(tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    env = dict(__import__("os").environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}",
               JAX_DISTILL_STORAGE_TIMEOUT_S="3", FSSPEC_GCS_TOKEN="anon")
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "jax_distill.evaluate", "--config", "configs/eval/default.py",
         "--config.checkpoint=gs://bucket-x/student", f"--config.output_dir={tmp_path}", "--config.multiple_choice.tasks="],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert res.returncode == 1 and time.monotonic() - start < 60, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("FATAL") and "gs://bucket-x/student" in last and f"127.0.0.1:{port}" in last, last


def _small_eval(folder, tmp_path, **fields):
    from jax_distill.cli import load_config

    return load_config("configs/eval/default.py", {
        "checkpoint": str(folder), "output_dir": str(tmp_path / "out"), "dtype": "float32",
        "problems.synthetic.num": 60, "problems.eval_limit": 2, "generation.sampling.max_tokens": 8,
        "generation.batch_size": 2, "multiple_choice.tasks": "hellaswag,piqa,winogrande",
        "multiple_choice.data_dir": str(tmp_path), "multiple_choice.batch_size": 4, **fields})


def test_a_task_without_documents_fails_before_any_generation(llama, tmp_path, monkeypatch):
    """The last task's file holds no valid record: the stage fails before loading the model or generating
    (it used to find out after the whole generation)."""
    from jax_distill.engines import jax_engine

    fixture_files(tmp_path)
    (tmp_path / "winogrande.jsonl").write_text('{"sentence": "no blank here", "option1": "a"}\n')
    started = []
    monkeypatch.setattr(jax_engine, "load_model", lambda *a, **k: started.append("load_model"))
    monkeypatch.setattr(ev, "evaluate_generation", lambda *a, **k: started.append("generation"))
    with pytest.raises(ValueError, match=r"winogrande\.jsonl: no winogrande documents \(skipped: \{"):
        ev.run(_small_eval(llama[0], tmp_path))
    assert started == [] and not (tmp_path / "out" / "eval_samples.jsonl").exists()
    (tmp_path / "winogrande.jsonl").unlink()
    with pytest.raises(checks.ConfigError, match=r"config\.multiple_choice\.data_dir: .*no file for task 'winogrande'"):
        ev.run(_small_eval(llama[0], tmp_path))
    assert started == []


def test_finished_parts_survive_a_crash_and_a_rerun_reuses_them(llama, tmp_path, monkeypatch):
    """A crash while scoring the second task keeps the generation and the first task; the rerun computes
    only the rest (generation and the first task are not run again) and gives the uninterrupted numbers."""
    fixture_files(tmp_path)
    calls = []
    real = ev.loglikelihood

    def crash_on_second_task(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "loglikelihood", crash_on_second_task)
    cfg = _small_eval(llama[0], tmp_path)
    with pytest.raises(RuntimeError, match="device lost"):
        ev.run(cfg)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "partial").iterdir()) == ["generation.json", "mc_hellaswag.json"]
    assert (out / "eval_samples.jsonl").exists() and not (out / "eval_results.json").exists()
    samples = (out / "eval_samples.jsonl").read_text()

    monkeypatch.setattr(ev, "loglikelihood", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    monkeypatch.setattr(ev, "evaluate_generation", lambda *a, **k: pytest.fail("generation ran again"))
    calls.clear()
    results = ev.run(cfg)
    assert calls == [2, 2]  # piqa (2 requests) and winogrande (2): hellaswag (4) was reused
    assert set(results["multiple_choice"]) == {"hellaswag", "piqa", "winogrande"}
    assert (out / "eval_samples.jsonl").read_text() == samples and not (out / "partial").exists()
    assert results["generation"]["overall"]["n"] == 2

    monkeypatch.undo()
    fresh = ev.run(_small_eval(llama[0], tmp_path, output_dir=str(tmp_path / "fresh")))
    for key in ("generation", "multiple_choice"):
        strip = lambda r: json.loads(json.dumps(r).replace('"seconds"', '"_"'))  # noqa: E731
        a, b = strip(results[key]), strip(fresh[key])
        for r in (a, b):
            for part in (r.values() if key == "multiple_choice" else [r]):
                part.pop("_", None)
                part.pop("file", None)
        assert a == b, key
    # a changed config (another multiple-choice limit) does not reuse a stamped part
    partial = ev.Partial(tmp_path / "out", cfg)
    partial.put("mc_piqa", {"limit": 0}, {"acc": 1.0})
    assert partial.get("mc_piqa", {"limit": 0}) == {"acc": 1.0} and partial.get("mc_piqa", {"limit": 5}) is None
