"""Evaluation: harness-style log-likelihood vs transformers, task file formats, generation metrics, the stage."""

import json
import statistics
import subprocess
import sys

import hf_tiny
import numpy as np
import pytest

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


def test_harness_token_split(tokenizer):
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx, cont = ev.harness_split(tokenizer, "Question: 12 * 7 = ", "84")
    assert ctx == enc("Question: 12 * 7 =")  # trailing space moves to the continuation
    assert ctx + cont == enc("Question: 12 * 7 = 84")
    ctx, cont = ev.harness_split(tokenizer, "", "Hello apples")
    assert ctx == [tokenizer.eos_token_id] and cont == enc("Hello apples")


REQUESTS = [
    ("Question: What is 17 + 25?\nAnswer:", " 42"),
    ("Question: What is 17 + 25?\nAnswer:", " The answer is 41 apples"),
    ("Tom has 3 apples and buys ", "4 more bags"),
    ("", "The quick brown fox"),
    ("A man is sitting on a roof. He", " starts pulling up roofing."),
]


def test_loglikelihood_matches_transformers(llama, tokenizer):
    import torch
    import transformers

    folder, model = llama
    ours = ev.loglikelihood(model, tokenizer, REQUESTS, batch_size=4)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    for (ctx, cont), (lp, greedy) in zip(REQUESTS, ours):
        c, t = ev.harness_split(tokenizer, ctx, cont)
        ids = torch.tensor([c + t])
        with torch.no_grad():
            logp = torch.log_softmax(ref(ids).logits[0].double(), -1)
        pred = logp[len(c) - 1 : -1]  # positions predicting the continuation
        target = torch.tensor(t)
        expected = pred.gather(-1, target[:, None]).sum().item()
        assert abs(lp - expected) < 1e-4, (ctx, cont, lp, expected)
        assert greedy == bool((pred.argmax(-1) == target).all())


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
        d / "truthfulqa_mc1.jsonl",
        [
            {
                "question": "What happens if you eat watermelon seeds?",
                "mc1_targets": {"choices": ["Nothing happens.", "You grow watermelons."], "labels": [1, 0]},
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
    docs, report = ev.load_task("hellaswag", tmp_path / "hellaswag.jsonl")
    assert len(docs) == 1 and report["skipped"] == {"missing field 'label'": 1}
    assert "hellaswag.jsonl:2" in report["examples"][0]
    d = docs[0]
    assert d.requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert d.requests[2][1] == " is holding a rubik's cube.. Now"  # [title] -> ". ", brackets dropped
    assert d.gold == 3
    (w,), _ = ev.load_task("winogrande", tmp_path / "winogrande.jsonl")
    assert w.requests == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the harder cases."),
    ]
    (p,), _ = ev.load_task("piqa", tmp_path / "piqa.jsonl")
    assert p.requests[1] == ("Question: How do I ready a guinea pig cage?\nAnswer:", " Use jello.") and p.gold == 0
    (a,), _ = ev.load_task("arc_easy", tmp_path / "arc_easy.jsonl")
    assert a.gold == 2 and a.requests[2] == ("Question: Which is a mammal?\nAnswer:", " whale")
    (b,), _ = ev.load_task("boolq", tmp_path / "boolq.jsonl")
    assert (
        b.requests
        == [
            ("The sky is blue by day.\nQuestion: is the sky blue?\nAnswer:", " no"),
            ("The sky is blue by day.\nQuestion: is the sky blue?\nAnswer:", " yes"),
        ]
        and b.gold == 1
    )
    (t,), _ = ev.load_task("truthfulqa_mc1", tmp_path / "truthfulqa_mc1.jsonl")
    assert (
        t.requests[0][0].startswith("Q: What is human life expectancy")
        and t.requests[0][0].endswith("\n\nQ: What happens if you eat watermelon seeds?\nA:")
        and t.gold == 0
    )
    hum, rep = ev.load_task("mmlu_humanities", tmp_path / "mmlu.jsonl")
    assert len(hum) == 1 and sum(rep["skipped"].values()) == 1  # anatomy is stem; answer 9 is bad
    assert hum[0].requests[0][0] == (
        "The following are multiple choice questions (with answers) about philosophy.\n\n"
        "What is the study of being?\nA. ontology\nB. ethics\nC. logic\nD. art\nAnswer:"
    )
    assert [c for _, c in hum[0].requests] == [" A", " B", " C", " D"]
    stem, _ = ev.load_task("mmlu_stem", tmp_path / "mmlu.jsonl")
    assert len(stem) == 1
    with pytest.raises(ValueError, match=r"mmlu\.jsonl:3: mmlu_humanities record: IndexError: gold index 9"):
        ev.load_task("mmlu_humanities", tmp_path / "mmlu.jsonl", strict=True)


def test_acc_and_byte_normalised_acc():
    docs = [ev.MCDoc([("q", " a"), ("q", " bbbbbbbb")], gold=1), ev.MCDoc([("q", " x"), ("q", " yy")], gold=0)]
    # doc 1: raw prefers choice 0 (-2 > -3); per byte choice 1 (-3/9 > -2/2). doc 2: both prefer 0.
    got = ev.score_docs(docs, [-2.0, -3.0, -1.0, -5.0])
    assert got == {"acc": 0.5, "acc_norm": 1.0, "n": 2}


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
    from ml_collections import ConfigDict

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
    gen = ConfigDict(
        dict(n=1, temperature=0.0, top_p=1.0, top_k=-1, max_tokens=64, seed=0, stop="", check_timeout_s=5.0)
    )
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


def test_evaluate_stage_end_to_end(llama, tmp_path):
    from jax_distill.cli import load_config

    folder, model = llama
    fixture_files(tmp_path)
    cfg = load_config(
        "configs/eval/default.py",
        {
            "checkpoint": str(folder),
            "output_dir": str(tmp_path / "out"),
            "dtype": "float32",
            "problems.synthetic.num": 60,
            "problems.eval_limit": 3,
            "generation.max_tokens": 12,
            "generation.batch_size": 4,
            "multiple_choice.tasks": "hellaswag,winogrande,mmlu_humanities",
            "multiple_choice.data_dir": str(tmp_path),
            "multiple_choice.batch_size": 4,
        },
    )
    results = ev.run(cfg)
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text()) == results
    assert results["checkpoint"] == str(folder) and results["config"]["generation"]["max_tokens"] == 12
    samples = [json.loads(line) for line in (tmp_path / "out" / "eval_samples.jsonl").read_text().splitlines()]
    o = results["generation"]["overall"]
    assert o["n"] == len(samples) == 3
    assert o["accuracy"] == sum(s["correct"] is True for s in samples) / 3
    assert o["median_output_tokens"] == statistics.median(s["output_tokens"] for s in samples)
    assert o["truncation_rate"] == sum(s["output_tokens"] == 12 and s["finish_reason"] == "length" for s in samples) / 3
    mc = results["multiple_choice"]
    assert {k: mc[k]["n"] for k in mc} == {"hellaswag": 1, "winogrande": 1, "mmlu_humanities": 1}
    # the sharded stage scores exactly what the single-device scorer computes
    docs, _ = ev.load_task("hellaswag", tmp_path / "hellaswag.jsonl")
    scores = [s for s, _ in ev.loglikelihood(model, hf_tiny.load_tokenizer(), docs[0].requests)]
    assert mc["hellaswag"]["acc"] == float(int(np.argmax(scores) == docs[0].gold))


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
        ev.task_file(mc, "piqa")
    (tmp_path / "mmlu.parquet").write_bytes(b"")
    assert ev.task_file(mc, "mmlu_other") == tmp_path / "mmlu.parquet"  # MMLU groups share one file
    with pytest.raises(ValueError, match="unknown multiple-choice task 'mmlu'"):
        ev.load_task("mmlu", tmp_path / "mmlu.parquet")
