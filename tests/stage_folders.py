"""What a trace stage's out_dir holds, in a form two runs can be compared by (a Ray run with a local one,
in tests/test_ray_dispatch.py and tests/test_vllm_engine.py)."""

import json
import os
from pathlib import Path

from jax_distill.traces import store


def contents(out):
    """Every record (meta without its time), error and done marker (ids, counts, lines) of a stage folder, by file."""
    out = Path(out)
    recs = {}
    for f in store.chunk_files(str(out)):
        recs[os.path.basename(f)] = [{**r, "meta": {k: v for k, v in r["meta"].items() if k != "time"}}
                                     for r in store.read_records(f)]
    done = {}
    for p in out.glob("*.done.json"):
        info = json.loads(p.read_text())
        # times differ, and with them the bytes of the files that hold them: lines are compared
        done[p.name] = {**{k: v for k, v in info.items() if k != "time"},
                        "files": {f: entry["lines"] for f, entry in info["files"].items()}}
    return recs, done, store.read_errors(str(out))
