"""The command line: config files are checked like flags, list fields take a,b, from_json keeps tuples."""

import subprocess
import sys
import textwrap

import pytest
from ml_collections import ConfigDict

from jax_distill import checks, cli

DECLARED = textwrap.dedent(
    """
    from ml_collections import ConfigDict

    def default_config():
        c = ConfigDict()
        c.optim = ConfigDict(dict(lr=1e-4, name="adamw"))
        c.train = ConfigDict(dict(batch_size=8, steps=0))
        c.variants = ("raw",)
        c.recipes = ConfigDict()  # free-form map
        return c
    """
)


def _stage(tmp_path, config_body: str, *flags: str, config_flag: str = "--config=") -> subprocess.CompletedProcess:
    (tmp_path / "declared.py").write_text(DECLARED)
    (tmp_path / "stage.py").write_text(
        "import sys; sys.path.insert(0, %r)\n" % str(tmp_path)
        + "from declared import default_config\nfrom jax_distill.cli import run_stage\n"
        + "run_stage(lambda c: print('RAN', c.optim.lr, c.train.batch_size, tuple(c.variants)), default_config)\n"
    )
    (tmp_path / "cfg.py").write_text(
        "import sys; sys.path.insert(0, %r)\nfrom declared import default_config\n\n" % str(tmp_path)
        + "def get_config():\n    c = default_config()\n"
        + textwrap.indent(textwrap.dedent(config_body), "    ")
        + "    return c\n"
    )
    return subprocess.run(
        [sys.executable, str(tmp_path / "stage.py"), *_config_args(config_flag, tmp_path / "cfg.py"), *flags],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    "body, field, hint",
    [
        ("c.optim.learning_rate = 0.1\n", "config.optim.learning_rate", ""),
        ("c.train.batchsize = 2\n", "config.train.batchsize", "Did you mean train.batch_size?"),
    ],
)
def test_typo_inside_a_config_file_fails_at_start(tmp_path, body, field, hint):
    out = _stage(tmp_path, body)
    assert out.returncode != 0 and "RAN" not in out.stdout, out.stdout
    assert field in out.stderr and hint in out.stderr, out.stderr


def test_wrong_type_inside_a_config_file_fails_at_start(tmp_path):
    out = _stage(tmp_path, "c.train.steps = '10'\n")  # ConfigDict's own type check, inside the file
    assert out.returncode != 0 and "RAN" not in out.stdout and "steps" in out.stderr


def test_declared_fields_free_maps_and_list_overrides_run(tmp_path):
    out = _stage(tmp_path, "c.recipes.anything = 1\nc.optim.lr = 3e-4\n", "--config.variants=raw,compressed:x",
                 "--config.train.batch_size=2")
    assert out.returncode == 0, out.stderr
    assert "RAN 0.0003 2 ('raw', 'compressed:x')" in out.stdout


def _config_args(flag: str, path) -> list[str]:
    return [f"--config={path}"] if flag == "--config=" else ["--config", str(path)]


def test_list_override_after_config_as_two_words(tmp_path):
    """`--config <file>` (the README's spelling) with a list of paths: a tuple of the paths."""
    out = _stage(tmp_path, "", "--config.variants=/a/raw,/b/compressed", config_flag="--config")
    assert out.returncode == 0, out.stderr
    assert "RAN 0.0001 8 ('/a/raw', '/b/compressed')" in out.stdout


def test_override_of_a_hyphenated_name(tmp_path):
    """A free-map entry named with a hyphen (a student 'tiny-qwen3') is overridable like any field."""
    out = _stage(tmp_path, "c.recipes['tiny-qwen3'] = dict(seed=0)\n", "--config.recipes.tiny-qwen3.seed=7",
                 "--config.variants=raw")
    assert out.returncode == 0, out.stderr  # ml_collections alone: "malformed node or string"
    assert "RAN 0.0001 8 ('raw',)" in out.stdout
    assert cli._subscript_names("recipes.tiny-qwen3.seed") == "recipes['tiny-qwen3'].seed"


def test_check_declared_in_process():
    declared = ConfigDict(dict(a=ConfigDict(dict(b=1.0)), n=2))
    cli.check_declared(ConfigDict(dict(a=dict(b=3), n=5)), declared, "x.py")  # int where float: fine
    with pytest.raises(checks.ConfigError, match=r"config\.a\.c: x\.py sets a field"):
        cli.check_declared(ConfigDict(dict(a=dict(c=3))), declared, "x.py")
    with pytest.raises(checks.ConfigError, match=r"config\.n:.*bool"):
        cli.check_declared(ConfigDict(dict(n=True)), declared, "x.py")


def test_set_fields_splits_strings_for_list_fields():
    cfg = ConfigDict(dict(variants=("raw",), name="x"))
    cli.set_fields(cfg, {"variants": "raw, compressed:a", "name": "a,b"})
    assert cfg.variants == ("raw", "compressed:a") and cfg.name == "a,b"


def test_from_json_restores_tuples(tmp_path):
    cfg = ConfigDict(dict(variants=("raw", "answer_only"), nested=dict(stop=("a",))))
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    back = cli.config_file(f"configs/from_json.py:{path}")
    assert back.variants == ("raw", "answer_only") and back.nested.stop == ("a",)


def test_an_error_in_a_data_worker_ends_in_one_line_naming_it(tmp_path):
    """A chat template that raises inside a Grain worker process (as a missing jinja2 did): after the
    tracebacks, the last line names the cause."""
    import json
    import shutil

    import hf_tiny

    tok = tmp_path / "tok"
    shutil.copytree(hf_tiny.tokenizer_dir(), tok)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('boom in the chat template') }}"
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    for template in tok.glob("chat_template.*"):
        template.unlink()
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({"id": f"r{i}", "question": "q?", "answer": "a", "trace": "t", "variant": "raw"})
                              + "\n" for i in range(8)))
    out = subprocess.run(
        [sys.executable, "-m", "jax_distill.train", "--config", "configs/train/tiny.py", f"--config.data.path={traces}",
         f"--config.train.tokenizer={tok}", f"--config.train.run_dir={tmp_path / 'run'}", "--config.data.workers=1",
         "--config.train.steps=2"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "FATAL TemplateError: boom in the chat template", out.stderr[-2000:]
