"""The embedded default experiment, in miniature: every stage wired end to end, then resumed."""

import json

import pytest
from ml_collections import ConfigDict

from jax_distill import experiment
from jax_distill.cli import load_config

DEMO = "configs/experiment/demo.py"


def miniature(workdir, **extra):
    """The demo config shrunk so the whole grid runs in about a minute on 2 cores."""
    overrides = {
        "workdir": str(workdir),
        "problems.synthetic.num": 60,
        "problems.eval_limit": 6,
        "problems.held_out": "arith=0.2",
        "methods": "full",
        "train.train.seq_len": 512,
        "train.train.batch_size": 8,
        "train.data.num_epochs": 1,
        "train.checkpoint.every": 0,
        "eval.generation.sampling.max_tokens": 48,
        "eval.generation.batch_size": 8,
        "eval.multiple_choice.limit": 8,
        **extra,
    }
    overrides["students.tiny-qwen3.pretrain.problems.synthetic.num"] = 40
    overrides["students.tiny-qwen3.pretrain.train.data.num_epochs"] = 1
    overrides["students.tiny-qwen3.tiny.hidden_size"] = 64
    overrides["students.tiny-qwen3.tiny.intermediate_size"] = 96
    overrides["students.tiny-qwen3.tiny.num_layers"] = 2
    overrides["students.tiny-qwen3.tiny.head_dim"] = 16
    return load_config(DEMO, overrides)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    return work, experiment.run(miniature(work))


def test_every_stage_writes_its_output(demo_run):
    work, result = demo_run
    assert len(result["runs"]) == 4  # one method x four variants
    for run_dir in result["runs"]:
        summary = json.loads((work / run_dir / "train_summary.json").read_text())
        assert summary["status"] == "complete" and summary["train_tokens"] > 0
        results = json.loads((work / run_dir / "eval" / "eval_results.json").read_text())
        generation = results["generation"]
        assert generation["overall"]["n"] == generation["problems"]["eval"] > 0
        # the stage config lives beside its output and reloads through configs/from_json.py
        assert load_config(f"configs/from_json.py:{work / run_dir / 'train_config.json'}").train.run_dir == str(run_dir)
    # tiny student built from the traces' own text, as an ordinary HF folder
    assert (work / "students" / "tiny-qwen3" / "tokenizer.json").exists()


def test_variants_train_on_the_same_questions_with_the_same_updates(demo_run):
    """Matched sets (default on) and train.budget=examples: every variant of the row reads the same traces
    and takes the same optimizer steps; what the matching removed is written down."""
    work, result = demo_run
    summaries = [json.loads((work / d / "train_summary.json").read_text()) for d in result["runs"]]
    matched = json.loads((work / "matched" / "procedural" / "tiny-qwen3" / "full" / "matched.json").read_text())
    assert matched["universe"] == matched["kept"] + sum(matched["removed"].values()) and matched["kept"] > 0
    assert {s["data"]["used"] for s in summaries} == {matched["kept"]}
    assert all(s["data"]["skipped"]["not_in_ids"] == s["data"]["read"] - matched["kept"] for s in summaries)
    assert {s["budget"] for s in summaries} == {"examples"} and len({s["optimizer_steps"] for s in summaries}) == 1
    for s in summaries:
        assert s["examples_per_step"] == pytest.approx(matched["kept"] / s["optimizer_steps"])
        assert s["tokens_per_step"] == pytest.approx(s["train_tokens"] / s["optimizer_steps"])
    assert "| procedural/tiny-qwen3/full |" in (work / "matched" / "summary.md").read_text()
    budget = (work / "report" / "budget_table.md").read_text()
    assert budget.count("| examples |") == 4 and "optimizer_steps" in budget


def test_report_table_has_every_variant_and_relative_columns(demo_run):
    work, _ = demo_run
    table = (work / "report" / "main_table.md").read_text()
    for variant in ("raw", "compressed-extractive", "truncated-extractive", "answer-only"):
        assert f"| {variant} |" in table
    tables = json.loads((work / "report" / "report.json").read_text())
    by_variant = {(r["method"], r["variant"]): r for r in tables["cells"]}
    raw, comp = by_variant[("full", "raw")], by_variant[("full", "compressed-extractive")]
    # compressed traces are far shorter, so the student trains on far fewer tokens
    assert comp["train_tokens"] < 0.5 * raw["train_tokens"]
    assert raw["accuracy_lo"] <= raw["accuracy"] <= raw["accuracy_hi"]
    efficiency = {r["variant"]: r for r in tables["efficiency"]}
    ratio = efficiency["compressed-extractive"]["train_token_ratio"]
    assert ratio == pytest.approx(comp["train_tokens"] / raw["train_tokens"], rel=1e-6)
    assert {r["variant"] for r in tables["comparisons"]} == {"compressed-extractive", "truncated-extractive", "answer-only"}
    assert (work / "report" / "accuracy_vs_length.png").exists()


def test_rerun_resumes_without_redoing_work(demo_run, capsys):
    work, first = demo_run
    stamps = {p: p.stat().st_mtime for p in work.glob("runs/**/train_summary.json")}
    second = experiment.run(miniature(work))
    assert second["runs"] == first["runs"]
    assert stamps == {p: p.stat().st_mtime for p in work.glob("runs/**/train_summary.json")}


def test_plan_only_prints_one_command_per_stage(tmp_path, capsys):
    result = experiment.run(miniature(tmp_path, plan_only=True))
    plan = result["plan"]
    assert sum("/train_config.json" in p for p in plan) == 4
    assert sum("pretrain_config.json" in p and "jax_distill.train " in p for p in plan) == 1
    assert sum("jax_distill.evaluate" in p for p in plan) == 4
    assert all("configs/from_json.py:" in p for p in plan)
    assert not (tmp_path / "runs" / "procedural" / "tiny-qwen3" / "full" / "raw" / "seed0" / "train_summary.json").exists()


def test_evaluation_asks_in_the_chat_format_the_student_was_trained_with(tmp_path):
    """A student trained with a non-default chat format is evaluated (rendered, and stopped at the end of
    its turn) in that format, not the eval template's defaults."""
    result = experiment.run(miniature(tmp_path, plan_only=True, **{
        "train.data.template": "fallback", "train.data.end_of_turn": "<|endoftext|>",
        "train.data.system": "Think step by step."}))
    for run in result["runs"]:
        ev = json.loads(open(f"{run}/eval/evaluate_config.json").read())["chat"]
        train = json.loads(open(f"{run}/train_config.json").read())["data"]
        assert ev == {k: train[k] for k in ev}
        assert (ev["template"], ev["end_of_turn"], ev["system"]) == ("fallback", "<|endoftext|>", "Think step by step.")


def test_every_cell_is_trained_once_per_seed(tmp_path):
    result = experiment.run(miniature(tmp_path, plan_only=True, seeds="0,1"))
    assert len(result["runs"]) == 8 and sum("/train_config.json" in p for p in result["plan"]) == 8
    assert [r.rsplit("/", 1)[1] for r in result["runs"][:2]] == ["seed0", "seed1"]
    train_cfg = json.loads(open(f"{result['runs'][1]}/train_config.json").read())
    assert train_cfg["train"]["seed"] == 1
    with pytest.raises(ValueError, match=r"config\.seeds: repeats a seed"):
        experiment.run(miniature(tmp_path, plan_only=True, seeds="1,1"))


def test_unknown_variant_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'distilled'"):
        experiment.run(miniature(tmp_path, variants="raw,distilled", stages="train"))


def test_paper_plan_has_exactly_the_documented_runs(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_experiment", "configs/experiment/paper.py")
    paper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper)
    cfg = load_config("configs/experiment/paper.py", {"workdir": str(tmp_path), "plan_only": True})
    result = experiment.run(cfg)
    trains = [p for p in result["plan"] if "jax_distill.train " in p]
    assert len(trains) == 56 == len(result["costs"])
    kinds = {}
    for row in result["costs"]:
        variant = row["cell"].split("/")[-1]
        kinds[variant] = kinds.get(variant, 0) + 1
    assert kinds == {"raw": 16, "compressed:llama": 16, "compressed:ministral": 16, "truncated:llama": 7, "answer_only": 1}
    truncation = [r["cell"] for r in result["costs"] if "truncated" in r["cell"] or "answer_only" in r["cell"]]
    assert truncation == list(paper.TRUNCATION_CELLS + paper.ANSWER_ONLY_CELLS)
    out = capsys.readouterr().out
    assert "cost plan: h100" in out and "| total (56 runs) |" in out


def test_cost_of_one_run_matches_a_hand_computation():
    from jax_distill import cost

    hf = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=100, hidden_size=16,
              intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
              rms_norm_eps=1e-5, rope_theta=1e4, tie_word_embeddings=False, max_position_embeddings=128)
    size = cost.size_from_hf(hf)
    # per layer: q 16x16, k and v 16x8, o 16x16, gate/up/down 16x32, two norms; + lm_head 16x100 + final norm;
    # the 100x16 embedding is a lookup (stored, not multiplied)
    per_layer = 256 + 128 + 128 + 256 + 3 * 512 + 2 * 16
    assert size.active == 2 * per_layer + 1600 + 16 and size.total == size.active + 1600
    tokens, seq = 10 * 4 * 64, 64
    full = cost.run_cost(size, "full", tokens, seq, "h100", 0.5)
    assert full["flops"] == tokens * (6 * size.active + 12 * 2 * 16 * seq)
    assert full["chip_hours"] == pytest.approx(full["flops"] / (0.5 * 989e12) / 3600)
    lora = cost.run_cost(size, "lora", tokens, seq, "v5e", 0.5)
    assert lora["flops"] == tokens * (4 * size.active + 12 * 2 * 16 * seq)
    with pytest.raises(ValueError, match="chip must be one of"):
        cost.run_cost(size, "full", tokens, seq, "tpu9", 0.5)


def test_cells_are_the_union_of_grids_and_named_cells(tmp_path):
    cfg = miniature(tmp_path)
    cfg.unlock()
    cfg.grids = ConfigDict({"a": ConfigDict(dict(teachers=("*",), students=("*",), methods=("full",),
                                                 variants=("raw", "compressed:extractive")))})
    cfg.cells = ("procedural/tiny-qwen3/lora/answer_only", "procedural/tiny-qwen3/full/raw")  # the 2nd repeats
    assert [str(c) for c in experiment.cells(cfg)] == [
        "procedural/tiny-qwen3/full/raw", "procedural/tiny-qwen3/full/compressed:extractive",
        "procedural/tiny-qwen3/lora/answer_only"]
    cfg.cells = ("procedural/tiny-llama/full/raw",)
    with pytest.raises(ValueError, match="cells.*unknown student 'tiny-llama'"):
        experiment.cells(cfg)
