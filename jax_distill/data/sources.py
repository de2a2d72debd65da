"""Random-access record sources for Grain: JSONL over line offsets (os.pread) and Parquet (pyarrow).

A source returns raw records: `{"raw": bytes}` (JSONL, decoded later so that invalid UTF-8 or JSON is a
counted skip, not a crash) or `{"row": dict}` (Parquet), plus `"file"` (index into `files`) and
`"line"` (1-based line of the JSONL file, or 1-based row of the Parquet file). Reads are thread-safe
(pread never moves a file position; Parquet tables load once under a lock) and the sources pickle
without their open files, so Grain threads and worker processes can share them.
"""

from __future__ import annotations

import glob
import mmap
import os
import threading
from pathlib import Path

import numpy as np

from jax_distill.data.chat import DataError

FORMATS = ("auto", "jsonl", "parquet")  # data.format: auto = by file suffix
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
_REMOTE: dict[str, str] = {}  # local cache path -> the gs:// name reports should show


# A directory yields its record files only: a trace stage's directory also holds failure sidecars,
# done markers and summaries (traces/store.py), which are not training records.
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".parquet", ".pq")
SIDECAR_SUFFIXES = (".errors.jsonl",)


def _is_record_file(name: str) -> bool:
    return name.endswith(RECORD_SUFFIXES) and not name.endswith(SIDECAR_SUFFIXES)


def local_matches(part: str) -> list[str]:
    """The local files one data.path entry names, sorted: a directory's record files, a glob's matches,
    or the file itself ([] when nothing matches)."""
    if os.path.isdir(part):
        return sorted(str(p) for p in Path(part).iterdir() if _is_record_file(p.name) and p.is_file())
    if glob.has_magic(part):
        return sorted(glob.glob(part, recursive=True))
    return [part] if os.path.exists(part) else []


def resolve_files(paths: str | tuple[str, ...], fmt: str = "auto") -> list[str]:
    """Files named by `paths`: one path, glob or directory, or a tuple of them (local or gs://)."""
    files: list[str] = []
    for part in (paths,) if isinstance(paths, str) else tuple(paths):
        found = _gcs_files(part) if part.startswith("gs://") else local_matches(part)
        if not found:
            raise DataError(f"data.path: nothing matches {part!r}")
        files.extend(found)
    if not files:
        raise DataError("data.path is empty: name the trace files (path, glob or directory)")
    for f in files:
        if not _format_of(f, fmt):
            raise DataError(f"{f}: unknown data format; name it .jsonl/.parquet or set data.format")
    return files


def _gcs_files(spec: str) -> list[str]:
    """gs:// files are copied into a local cache (the same cache models use; again when the remote size
    changes), then read locally with pread like any file."""
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    remote = sorted(fs.glob(spec[len("gs://") :]) if glob.has_magic(spec) else [spec[len("gs://") :]])
    if len(remote) == 1 and fs.isdir(remote[0]):
        remote = sorted(p for p in fs.ls(remote[0], detail=False) if _is_record_file(p) and not fs.isdir(p))
    if not remote:
        raise DataError(f"data.path: nothing matches {spec!r}")
    cache = Path(os.environ.get("JAX_DISTILL_CACHE", Path.home() / ".cache" / "jax_distill")) / "gcs"
    out = []
    for r in remote:
        local = cache / r
        if not local.exists() or local.stat().st_size != fs.info(r)["size"]:  # new or rewritten upstream
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(local.name + f".partial{os.getpid()}")
            fs.get(r, str(partial))
            os.replace(partial, local)
        _REMOTE[str(local)] = "gs://" + r
        out.append(str(local))
    return out


def _format_of(path: str, fmt: str) -> str | None:
    if fmt in ("jsonl", "parquet"):
        return fmt
    if fmt != "auto":
        raise DataError(f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    low = path.lower()
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


class JsonlIndex:
    """Byte offsets of the non-blank lines of one JSONL file (built once with numpy over an mmap)."""

    CHUNK = 1 << 26  # scan 64 MiB at a time: trace files can be many GB

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        if size == 0:
            self.offsets = self.lengths = self.lines = np.zeros(0, np.int64)
            return
        chunk = self.CHUNK
        newlines = []
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for lo in range(0, size, chunk):
                part = np.frombuffer(m, np.uint8, count=min(chunk, size - lo), offset=lo)
                newlines.append(np.flatnonzero(part == 10) + lo)
                del part
            newlines = np.concatenate(newlines)
            starts = np.concatenate([[0], newlines + 1])
            ends = np.concatenate([newlines, [size]])
            keep = ends > starts
            # lines of only whitespace are not records (e.g. a trailing blank line)
            for i in np.flatnonzero(keep & (ends - starts < 8)):
                if not m[starts[i] : ends[i]].strip():
                    keep[i] = False
        self.offsets = starts[keep].astype(np.int64)
        self.lengths = (ends - starts)[keep].astype(np.int64)
        self.lines = (np.flatnonzero(keep) + 1).astype(np.int64)


class RecordSource:
    """All records of all files, as one random-access Grain source (len + __getitem__)."""

    def __init__(self, files: list[str], fmt: str = "auto", columns: list[str] | None = None):
        self.files = list(files)
        self.names = [_REMOTE.get(f, f) for f in self.files]  # for reports: gs:// names, not cache paths
        self.formats = [_format_of(f, fmt) for f in self.files]
        self.columns = columns
        counts = []
        self._jsonl: dict[int, JsonlIndex] = {}
        for i, (f, kind) in enumerate(zip(self.files, self.formats)):
            if kind == "jsonl":
                self._jsonl[i] = JsonlIndex(f)
                counts.append(len(self._jsonl[i].offsets))
            else:
                import pyarrow.parquet as pq

                try:
                    counts.append(pq.ParquetFile(f).metadata.num_rows)
                except Exception as e:  # noqa: BLE001 - any pyarrow failure is a bad file
                    raise DataError(f"{f}: not a readable Parquet file ({e})") from None
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._init_handles()

    def _init_handles(self):
        self._fds: dict[int, int] = {}
        self._tables: dict[int, object] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_fds", "_tables", "_lock"):
            state.pop(k)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_handles()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(file index, position within the file) of a global record index."""
        f = int(np.searchsorted(self._starts, index, side="right") - 1)
        return f, int(index - self._starts[f])

    def where(self, file: int, line: int) -> str:
        unit = "line" if self.formats[file] == "jsonl" else "row"
        return f"{self.names[file]}:{unit} {line}"

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        f, k = self.locate(index)
        if self.formats[f] == "jsonl":
            ix = self._jsonl[f]
            fd = self._fds.get(f)
            if fd is None:
                with self._lock:
                    fd = self._fds.get(f)
                    if fd is None:
                        fd = self._fds[f] = os.open(self.files[f], os.O_RDONLY)
            raw = os.pread(fd, int(ix.lengths[k]), int(ix.offsets[k]))
            return {"raw": raw, "file": f, "line": int(ix.lines[k]), "index": index}
        table = self._tables.get(f)
        if table is None:
            with self._lock:
                table = self._tables.get(f)
                if table is None:
                    table = self._tables[f] = self._read_parquet(f)
        return {"row": table.slice(k, 1).to_pylist()[0], "file": f, "line": k + 1, "index": index}

    def _read_parquet(self, f: int):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.files[f])
        names = set(pf.schema_arrow.names)
        cols = None if self.columns is None else [c for c in self.columns if c in names]
        return pf.read(columns=cols)

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
