"""Reading record files (JSONL / JSON list / Parquet, local or gs://) and writing small tables.

Ground floor: imports nothing from the package. One location format, "file:line" (1-based line of
a JSONL file, 1-based row of a Parquet file or JSON list), and one bad-row type, so every stage
reports a broken input the same way and decides itself whether to skip (and count) or raise.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator, Sequence

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet", ".pq")


class BadRecord(ValueError):
    """A record that cannot be used: `reason` is a short counter key, `where` is "file:line"."""

    def __init__(self, reason: str, where: str, field: str = "", detail: str = ""):
        field_part = f" ({field})" if field else ""
        super().__init__(f"{where}: {reason}{field_part}{': ' + detail if detail else ''}")
        self.reason, self.where, self.field, self.detail = reason, where, field, detail


@contextlib.contextmanager
def open_binary(path: str):
    """A local file or a gs:// object (through gcsfs), opened for reading bytes."""
    if str(path).startswith("gs://"):
        import gcsfs

        with gcsfs.GCSFileSystem().open(str(path)[len("gs://") :], "rb") as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


def iter_records(path: str) -> Iterator[tuple[str, Any]]:
    """("file:line", record) for every record of a file; a line that is not UTF-8 JSON is yielded as a
    BadRecord in place of the record (callers skip-and-count or raise it). Blank lines are not records."""
    path = str(path)
    low = path.lower()
    if low.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        with open_binary(path) as f:
            rows = pq.read_table(f).to_pylist()
        for i, row in enumerate(rows, 1):
            yield f"{path}:{i}", row
        return
    if low.endswith(JSON_SUFFIXES):
        with open_binary(path) as f:
            try:
                data = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadRecord("invalid_json", f"{path}:0", detail=str(e)) from None
        if not isinstance(data, list):
            raise BadRecord("not_a_list", f"{path}:0", detail="a .json record file holds a JSON list of records")
        for i, row in enumerate(data, 1):
            yield f"{path}:{i}", row
        return
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield where, BadRecord("invalid_utf8", where, detail=str(e))
            except json.JSONDecodeError as e:
                yield where, BadRecord("invalid_json", where, detail=str(e))


def get_field(row: Any, dotted: str) -> Any:
    """Dotted access ("choices.text", "meta.rho_chars") into nested dicts; None when any part is missing."""
    node = row
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def markdown_table(rows: Sequence[dict], columns: Sequence[str], fmt=None, headers: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `fmt(column, value) -> str` formats cells (default: str, None -> "")."""
    fmt = fmt or (lambda _col, v: "" if v is None else str(v))
    head = list(headers or columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
