"""The evaluate stage fails, naming the config or the file, when there is nothing to evaluate (it used to
report {"n": 0} / acc null and exit 0)."""

import hf_tiny
import pytest

from jax_distill import evaluate
from jax_distill.checks import ConfigError
from jax_distill.cli import load_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return hf_tiny.save_tiny_model("llama", tmp_path_factory.mktemp("llama"))


def _config(checkpoint, out, **overrides):
    return load_config("configs/eval/default.py", {"checkpoint": str(checkpoint), "output_dir": str(out),
                                                   "dtype": "float32", "multiple_choice.tasks": "", **overrides})


def test_no_eval_problems_names_the_problems_config(checkpoint, tmp_path):
    cfg = _config(checkpoint, tmp_path / "out", **{"problems.synthetic.num": 20, "problems.eval_fraction": 0.0})
    with pytest.raises(ConfigError, match=r"config\.problems: sources synthetic give no eval problems \(eval_fraction 0\.0"):
        evaluate.run(cfg)
    assert not (tmp_path / "out" / "eval_results.json").exists()


def test_task_file_without_records_is_named(checkpoint, tmp_path):
    (tmp_path / "hellaswag.jsonl").write_text("")
    cfg = _config(checkpoint, tmp_path / "out", **{"generation.enabled": False, "multiple_choice.tasks": "hellaswag",
                                                   "multiple_choice.data_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=f"{tmp_path / 'hellaswag.jsonl'}: no hellaswag documents"):
        evaluate.run(cfg)
    assert not (tmp_path / "out" / "eval_results.json").exists()
