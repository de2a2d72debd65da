"""Trace stage folders as files other tools read (traces/store.py): `datasets` and `pandas` load a stage
folder's *.jsonl, or several stages' at once, as one table of records (errors live under errors/, every
column is a string in every variant); the previous format stays readable and is upgraded in place before a
resume; a bad input row of compress or truncate is skipped and counted with its file:line (field), or
raises under strict."""

import glob
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hf_tiny import tokenizer_dir

from jax_distill.cli import load_config
from jax_distill.engines import Completion
from jax_distill.engines.procedural import ProceduralTeacher
from jax_distill.records import BadRecord
from jax_distill.traces import compress, generate, store, truncate

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {"id", "problem_id", "dataset", "question", "gold", "answer_type", "answer", "trace", "variant", "meta"}


def gen_cfg(out, **overrides):
    base = {"out_dir": str(out), "problems.synthetic.num": 24, "sampling.n": 2, "chunk_size": 4}
    return load_config(str(ROOT / "configs/traces/generate.py"), {**base, **overrides})


def comp_cfg(raw, out, **overrides):
    return load_config(str(ROOT / "configs/traces/compress.py"),
                       {"in_dir": str(raw), "out_dir": str(out), "chunk_size": 8, **overrides})


def trunc_cfg(raw, comp, out, **overrides):
    return load_config(str(ROOT / "configs/traces/truncate.py"),
                       {"raw_dir": str(raw), "compressed_dir": str(comp), "out_dir": str(out),
                        "student_tokenizer": str(tokenizer_dir()), **overrides})


class WrongAndFailingTeacher:
    """The procedural teacher with wrong answers, an empty first completion for about a third of the
    questions (by a hash of the question: the same in any chunking) and request batch `fail_call`
    raising: a generate folder with rejected samples and error rows of both kinds."""

    name, model, tokenizer = "flaky", "flaky-1", None

    def __init__(self, fail_call=2):
        self.teacher, self.calls, self.fail_call = ProceduralTeacher(wrong_rate=0.3), 0, fail_call

    def count_tokens(self, text):
        return self.teacher.count_tokens(text)

    def generate(self, requests, params):
        self.calls += 1
        if self.calls == self.fail_call:
            raise RuntimeError("CUDA out of memory (simulated)")
        out = self.teacher.generate(requests, params)
        for messages, samples in zip(requests, out):
            if zlib.crc32(messages[-1]["content"].encode()) % 3 == 0:
                samples[0] = Completion("", "", "", 10, 0, "stop")
        return out


def load_with_datasets(dirs, cache):
    import datasets

    files = [f"{d}/*.jsonl" for d in dirs]
    return datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(cache))


def load_with_pandas(dirs):
    import pandas as pd

    return pd.concat([pd.read_json(f, lines=True, dtype=False) for d in dirs for f in sorted(glob.glob(f"{d}/*.jsonl"))],
                     ignore_index=True)


def check_table(ds, frame, dirs):
    """Both loaders saw exactly the records of `dirs` (no error row), with the same string columns."""
    want = sorted(r["id"] for d in dirs for r in store.read_records(str(d)))
    assert want and ds.num_rows == len(frame) == len(want)
    assert sorted(ds["id"]) == sorted(frame["id"]) == want
    assert set(ds.column_names) == set(frame.columns) == COLUMNS
    assert all(ds.features[c].dtype == "string" for c in COLUMNS)
    assert frame[sorted(COLUMNS)].map(type).eq(str).all().all()
    by_id = {r["id"]: r for d in dirs for r in store.read_records(str(d))}
    for row in ds.select(range(0, ds.num_rows, 7)):
        assert json.loads(row["meta"]) == by_id[row["id"]]["meta"]


def test_a_generate_folder_with_errors_loads_as_records_only(tmp_path):
    raw = tmp_path / "raw"
    s = generate.run(gen_cfg(raw), engine=WrongAndFailingTeacher())
    total = s["total"]
    assert total["errors"]["engine_error"] > 0 and total["errors"]["empty_completion"] > 0
    assert total["rejected"]["wrong_answer"] > 0 and s["balanced"]
    frame = load_with_pandas([raw])
    errors = store.read_errors(str(raw))
    assert len(frame) == total["kept"] and not {e["id"] for e in errors} & set(frame["id"])  # no error row
    ds = load_with_datasets([raw], tmp_path / "cache")
    check_table(ds, frame, [raw])
    assert len(errors) == sum(total["errors"].values()) and glob.glob(str(raw / "errors/*.jsonl"))


def test_raw_compressed_truncated_and_answer_only_load_together(tmp_path):
    raw, comp, trunc = tmp_path / "raw", tmp_path / "comp", tmp_path / "trunc"
    generate.run(gen_cfg(raw, **{"engine.procedural.wrong_rate": 0.3}))  # no student tokenizer: null counts
    compress.run(comp_cfg(raw, comp))
    ts = truncate.run(trunc_cfg(raw, comp, trunc))
    assert ts["balanced"] and ts["total"]["answer_only"] > 0 and ts["total"]["truncated"] > 0
    dirs = [raw, comp, trunc]
    ds, frame = load_with_datasets(dirs, tmp_path / "cache"), load_with_pandas(dirs)
    check_table(ds, frame, dirs)
    assert set(ds["variant"]) == {"raw", "compressed", "truncated", "answer_only"}
    # the stages read meta as they wrote it
    metas = {r["variant"]: r["meta"] for d in dirs for r in store.read_records(str(d))}
    assert metas["raw"]["student_tokens"] is None and metas["raw"]["correct"] is True
    assert metas["compressed"]["source_id"] and metas["truncated"]["budget_tokens"] >= 0


# ----------------------------------------------------------------------------- the previous format


def downgrade(out_dir):
    """Rewrite a stage folder in the previous format: meta objects, errors beside the records in
    .errors.jsonl, done markers counting files by suffix (what store.write_chunk wrote before)."""
    for done in glob.glob(f"{out_dir}/*.done.json"):
        base = done[: -len(".done.json")]
        info = json.loads(Path(done).read_text())
        recs = [json.loads(line) for line in Path(base + ".jsonl").read_text().splitlines()]
        old = "".join(json.dumps({**r, "meta": json.loads(r["meta"])}, ensure_ascii=False) + "\n" for r in recs)
        errors_file = Path(out_dir) / "errors" / (Path(base).name + ".jsonl")
        errs = errors_file.read_text()
        errors_file.unlink()
        Path(base + ".jsonl").write_text(old)
        Path(base + ".errors.jsonl").write_text(errs)
        info["files"] = {sfx: {"lines": len(data.splitlines()), "bytes": len(data.encode())}
                         for sfx, data in ((".jsonl", old), (".errors.jsonl", errs))}
        Path(done).write_text(json.dumps(info, indent=1))
    os.rmdir(Path(out_dir) / "errors")


def strip_time(rec):
    return {**rec, "meta": {k: v for k, v in rec["meta"].items() if k != "time"}}


def test_previous_format_is_read_refused_for_a_resume_and_upgraded(tmp_path):
    old, ref = tmp_path / "old", tmp_path / "reference"
    generate.run(gen_cfg(old), engine=WrongAndFailingTeacher(fail_call=None))
    want = sorted((strip_time(r) for r in store.read_records(str(old))), key=lambda r: r["id"])
    want_errors = store.read_errors(str(old))
    downgrade(old)
    first = old / "generate-shard000of001-00000.jsonl"
    assert isinstance(json.loads(first.read_text().splitlines()[0])["meta"], dict)
    assert (old / "generate-shard000of001-00000.errors.jsonl").exists()
    # still read as it is: records (meta included), errors, and as the input of the next stage
    assert sorted((strip_time(r) for r in store.read_records(str(old))), key=lambda r: r["id"]) == want
    assert store.read_errors(str(old)) == want_errors
    cs = compress.run(comp_cfg(old, tmp_path / "comp"))
    assert cs["balanced"] and cs["total"]["inputs"] == len(want)
    # a resume (the last chunk lost) would mix two schemas in one folder: refused before any work, naming a file
    last = sorted(glob.glob(str(old / "*.done.json")))[-1]
    lost = len(json.loads(Path(last).read_text())["ids"])
    os.remove(last)
    before = sorted(os.listdir(old))
    with pytest.raises(ValueError, match=r"generate-shard000of001-00000\.jsonl: written in the previous trace "
                                         r"format.*python -m jax_distill\.traces\.store upgrade"):
        generate.run(gen_cfg(old))
    assert sorted(os.listdir(old)) == before
    # upgraded in place (the command line), the resume redoes only the lost chunk
    proc = subprocess.run([sys.executable, "-m", "jax_distill.traces.store", "upgrade", str(old)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "chunk(s) upgraded" in proc.stdout, proc.stderr
    unfinished = Path(last).name.replace(".done.json", ".errors.jsonl")
    assert [Path(p).name for p in glob.glob(str(old / "*.errors.jsonl"))] == [unfinished]
    resumed = generate.run(gen_cfg(old), engine=WrongAndFailingTeacher(fail_call=None))
    assert resumed["this_run"]["generated"] == lost * 2 and resumed["balanced"]
    assert not glob.glob(str(old / "*.errors.jsonl"))  # the unfinished chunk's, cleaned by the resume
    reference = generate.run(gen_cfg(ref), engine=WrongAndFailingTeacher(fail_call=None))
    got = sorted((strip_time(r) for r in store.read_records(str(old))), key=lambda r: r["id"])
    assert got == sorted((strip_time(r) for r in store.read_records(str(ref))), key=lambda r: r["id"])
    assert resumed["total"] == reference["total"]
    check_table(load_with_datasets([old], tmp_path / "cache"), load_with_pandas([old]), [old])


# ----------------------------------------------------------------------------- bad input rows


def damage(out_dir):
    """Cut one line of the first raw chunk short and drop the answer of a record of the second, with
    their done markers updated (a finished folder written with bad rows); returns (cut, missing) as
    file:line."""
    files = sorted(glob.glob(f"{out_dir}/*[0-9].jsonl"))
    where = []
    for file, how in zip(files[:2], ("cut", "missing")):
        lines = Path(file).read_text().splitlines(keepends=True)
        assert len(lines) >= 2
        if how == "cut":
            lines[1] = lines[1][: len(lines[1]) // 2] + "\n"
        else:
            rec = json.loads(lines[1])
            del rec["answer"]
            lines[1] = json.dumps(rec) + "\n"
        data = "".join(lines)
        Path(file).write_text(data)
        done = Path(file[: -len(".jsonl")] + ".done.json")
        info = json.loads(done.read_text())
        key = Path(file).name if Path(file).name in info["files"] else ".jsonl"  # (the previous format: by suffix)
        info["files"][key] = {"lines": len(lines), "bytes": len(data.encode())}
        done.write_text(json.dumps(info))
        where.append(f"{file}:2")
    return where


def test_bad_raw_rows_are_skipped_and_counted_or_raise_under_strict(tmp_path):
    raw, comp, trunc = tmp_path / "raw", tmp_path / "comp", tmp_path / "trunc"
    generate.run(gen_cfg(raw, **{"engine.procedural.wrong_rate": 0.0}))
    n = len(list(store.read_records(str(raw))))
    cut, missing = damage(raw)
    cs = compress.run(comp_cfg(raw, comp))
    total = cs["total"]
    assert total["skipped"] == {"invalid_json": 1, "missing_field": 1} and cs["balanced"]
    assert total["inputs"] == n and total["compressed"] + total["fallback_raw"] == n - 2
    assert cs["skipped_examples"] == {"invalid_json": [cut], "missing_field": [f"{missing} (answer)"]}
    assert json.loads((comp / "summary.json").read_text())["skipped_examples"] == cs["skipped_examples"]
    skipped = [e for e in store.read_errors(str(comp)) if "where" in e]
    assert sorted((e["reason"], e["where"], e["field"]) for e in skipped) == [
        ("invalid_json", cut, ""), ("missing_field", missing, "answer")]
    assert len(list(store.read_records(str(comp)))) == n - 2
    again = compress.run(comp_cfg(raw, comp))  # counted once: a rerun finds them finished
    assert again["this_run"] == {} and again["total"] == total
    ts = truncate.run(trunc_cfg(raw, comp, trunc, variants=("answer_only",)))
    assert ts["total"]["skipped"] == {"invalid_json": 1, "missing_field": 1} and ts["balanced"]
    assert ts["total"]["answer_only"] == n - 2 and ts["skipped_examples"]["invalid_json"] == [cut]

    with pytest.raises(BadRecord, match=rf"^{cut}: invalid_json"):
        compress.run(comp_cfg(raw, tmp_path / "strict", strict=True))
    Path(cut.rsplit(":", 1)[0]).unlink()  # the one left: a missing field, named with its field
    with pytest.raises(BadRecord, match=rf"^{missing}: missing_field \(answer\)"):
        truncate.run(trunc_cfg(raw, comp, tmp_path / "strict", strict=True))
    assert not glob.glob(str(tmp_path / "strict" / "*.jsonl"))  # nothing written before the inputs are read
