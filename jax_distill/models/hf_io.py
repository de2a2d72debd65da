"""Hugging Face checkpoint folders <-> our parameter trees.

Reading is lazy and sharding-aware: each parameter is built with `jax.make_array_from_callback`, so a
device reads only its own slice of the safetensors files (a 9B model is never materialised twice on a
host). Each family supplies `weight_map(cfg)`: our parameter path -> `HFTensor` (HF key, with `{i}` for
the layer of stacked parameters, and whether the 2-D weight is transposed: HF stores [out, in]).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jax_distill.models.layers import weight
from jax_distill.params import ParamSpec

MAX_SHARD_BYTES = 4 * 1024**3
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


class CheckpointError(ValueError):
    """A checkpoint folder, or a parameter tree being exported, does not match the model's weight map."""


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """Where one of our parameters lives in an HF checkpoint.

    `read(reader, layer)` / `write(array, layer)` override the plain mapping for tensors that need
    conversion (fused or quantized layouts); they take and give full per-layer numpy arrays.
    """

    key: str
    transpose: bool = False
    layered: bool = False
    read: Callable[["CheckpointReader", int | None], np.ndarray] | None = None
    write: Callable[[np.ndarray, int | None], dict[str, np.ndarray]] | None = None
    source_keys: tuple[str, ...] = ()  # HF keys consumed by a custom `read` (for missing/unexpected checks)
    read_sliced: bool = False  # `read(reader, layer, index)` returns just that block (big quantized tensors)
    # PEFT adapts it as a parameter (`target_parameters`), not as an nn.Linear module (`target_modules`):
    # stacked expert weights [E, in, out] and weights of modules that are not nn.Linear (gpt-oss's router).
    # Parameters of one HF module are listed in the module's registration order, which is peft's nesting order.
    peft_parameter: bool = False

    def hf_key(self, layer: int | None) -> str:
        return self.key.format(i=layer)

    def consumed_keys(self, layer: int | None) -> tuple[str, ...]:
        keys = self.source_keys or (self.key,)
        return tuple(k.format(i=layer) for k in keys)


def stack_tensors(specs: dict, prefix: str = "model.") -> dict[tuple[str, ...], HFTensor]:
    """The weight map of a decoder's tensors outside its layers: embedding, final norm, untied lm_head."""
    out = {("embed",): HFTensor(prefix + "embed_tokens.weight"), ("final_norm",): HFTensor(prefix + "norm.weight")}
    if "lm_head" in specs:
        out[("lm_head",)] = HFTensor("lm_head.weight", transpose=True)
    return out


# ----------------------------------------------------------------------------- folders


def local_folder(path: str | os.PathLike, cache_dir: str | None = None) -> Path:
    """A local copy of an HF folder; `gs://` paths are copied once into a cache directory."""
    path = str(path)
    if not path.startswith("gs://"):
        return Path(path)
    import gcsfs

    cache = Path(cache_dir or os.environ.get("JAX_DISTILL_CACHE", Path.home() / ".cache" / "jax_distill"))
    target = cache / "gcs" / path[len("gs://") :].rstrip("/")
    marker = target / ".complete"
    if not marker.exists():
        fs = gcsfs.GCSFileSystem()
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for remote in fs.ls(path.rstrip("/"), detail=False):
            if not fs.isdir(remote):
                fs.get(remote, str(partial / Path(remote).name))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        marker.touch()
    return target


def read_config(folder: str | os.PathLike) -> dict:
    file = Path(folder) / "config.json"
    if not file.exists():
        raise CheckpointError(f"{file}: no config.json; not a Hugging Face model folder")
    with open(file) as f:
        return json.load(f)


class CheckpointReader:
    """Lazy access to the tensors of a folder (model.safetensors or a sharded index)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            with open(index) as f:
                self.key_to_file = {k: self.folder / v for k, v in json.load(f)["weight_map"].items()}
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.folder}: no *.safetensors files")
            self.key_to_file = {}
            for file in files:
                with safe_open(file, "numpy") as f:
                    self.key_to_file.update({k: file for k in f.keys()})
        self._handles: dict[Path, Any] = {}

    def keys(self) -> set[str]:
        return set(self.key_to_file)

    def _slice(self, key: str):
        if key not in self.key_to_file:
            raise CheckpointError(f"{self.folder}: tensor {key!r} is missing")
        file = self.key_to_file[key]
        if file not in self._handles:
            self._handles[file] = safe_open(file, "numpy")
        return self._handles[file].get_slice(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._slice(key).get_shape())

    def read(self, key: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        s = self._slice(key)
        return s[index] if index else s[:]


# ----------------------------------------------------------------------------- loading


def _flat_specs(specs: dict) -> dict[tuple[str, ...], ParamSpec]:
    flat = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, ParamSpec))[0]:
        flat[tuple(p.key for p in path)] = spec
    return flat


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def load_params(
    folder: str | os.PathLike,
    specs: dict,
    wmap: dict[tuple[str, ...], HFTensor],
    dtype=jnp.float32,
    shardings: Any = None,
    ignore: tuple[str, ...] = (),
) -> dict:
    """Read every parameter of `specs` from `folder`, cast to `dtype`, placed on `shardings`.

    Errors name every missing, unexpected and ill-shaped tensor at once. `ignore` holds regexes of HF
    keys that may be present and are skipped (e.g. vision towers, multi-token-prediction heads).
    """
    reader = CheckpointReader(folder)
    flat_specs = _flat_specs(specs)
    flat_shardings = _flat_specs_like(shardings, flat_specs)
    dtype = jnp.dtype(dtype)

    expected, problems = set(), []
    for path, spec in flat_specs.items():
        t = wmap[path]
        layers = range(spec.shape[0]) if t.layered else [None]
        for layer in layers:
            expected.update(t.consumed_keys(layer))
            if t.read is not None:
                continue
            key = t.hf_key(layer)
            if key not in reader.key_to_file:
                problems.append(f"missing tensor {key!r}")
                continue
            want = spec.shape[1:] if t.layered else spec.shape
            want = tuple(reversed(want)) if t.transpose else tuple(want)
            got = reader.shape(key)
            if got != want:
                problems.append(f"tensor {key!r} has shape {list(got)}, expected {list(want)}")
        for layer in layers if t.read is not None else ():
            missing = [k for k in t.consumed_keys(layer) if k not in reader.key_to_file]
            problems += [f"missing tensor {k!r}" for k in missing]
    patterns = [re.compile(p) for p in ignore]
    unexpected = sorted(k for k in reader.keys() - expected if not any(p.search(k) for p in patterns))
    problems += [f"unexpected tensor {k!r}" for k in unexpected[:20]]
    if len(unexpected) > 20:
        problems.append(f"... and {len(unexpected) - 20} more unexpected tensors")
    if problems:
        raise CheckpointError(f"{folder}: checkpoint does not match the model:\n  " + "\n  ".join(problems))

    out = {}
    for path, spec in flat_specs.items():
        t = wmap[path]
        sharding = flat_shardings[path] if flat_shardings else jax.sharding.SingleDeviceSharding(jax.devices()[0])
        out[path] = _build(reader, t, spec, dtype, sharding)
    return _unflatten(out)


def _flat_specs_like(shardings, flat_specs):
    if shardings is None:
        return None
    flat = {}
    leaves = jax.tree_util.tree_flatten_with_path(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]
    for path, s in leaves:
        flat[tuple(p.key for p in path)] = s
    missing = set(flat_specs) - set(flat)
    if missing:
        raise ValueError(f"shardings lack parameters {sorted(missing)}")
    return flat


def _build(reader: CheckpointReader, t: HFTensor, spec: ParamSpec, dtype, sharding) -> jax.Array:
    """One parameter as a (sharded) jax.Array; each device reads only its own block."""

    def per_layer(layer: int | None, index: tuple[slice, ...]) -> np.ndarray:
        if t.read is not None and t.read_sliced:
            return np.asarray(t.read(reader, layer, index))
        if t.read is not None:
            return np.asarray(t.read(reader, layer))[index]
        if t.transpose:
            return reader.read(t.hf_key(layer), tuple(reversed(index))).T
        return reader.read(t.hf_key(layer), index)

    blocks: dict[tuple, np.ndarray] = {}

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(slice(*s.indices(n)) for s, n in zip(index, spec.shape))
        k = tuple((s.start, s.stop) for s in index)
        if k not in blocks:
            if t.layered:
                layer_ids = range(*index[0].indices(spec.shape[0]))
                block = np.stack([per_layer(i, index[1:]) for i in layer_ids])
            else:
                block = per_layer(None, index)
            blocks[k] = np.ascontiguousarray(block).astype(dtype)
        return blocks[k]

    return jax.make_array_from_callback(spec.shape, sharding, callback)


# ----------------------------------------------------------------------------- saving


def host_array(x: jax.Array) -> np.ndarray:
    """A numpy copy of x on this host. A parameter sharded over several hosts is not addressable from one,
    so it is gathered first; every exporter goes through here for that reason."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def iter_hf_tensors(params: dict, wmap: dict[tuple[str, ...], HFTensor], dtype=None):
    """(HF key, numpy array) for every parameter, LoRA merged, one layer at a time.

    Every parameter of the map must be in the tree: a missing one raises (naming them all) before any
    tensor is produced, rather than leaving a checkpoint without it.
    """
    nodes, missing = {}, []
    for path in wmap:
        node: Any = params
        try:
            for name in path:
                node = node[name]
        except KeyError:
            missing.append("/".join(path))
            continue
        nodes[path] = node
    if missing:
        raise CheckpointError(f"cannot export: the parameter tree lacks {', '.join(missing)}")
    return _hf_tensors(nodes, wmap, dtype)


def _hf_tensors(nodes: dict, wmap: dict[tuple[str, ...], HFTensor], dtype):
    for path, t in wmap.items():
        node = weight(nodes[path])
        layers = range(node.shape[0]) if t.layered else [None]
        for layer in layers:
            arr = host_array(node[layer] if layer is not None else node)
            if dtype is not None:
                arr = arr.astype(jnp.dtype(dtype))
            if t.write is not None:
                yield from t.write(arr, layer).items()
            else:
                yield t.hf_key(layer), np.ascontiguousarray(arr.T if t.transpose else arr)


def save_folder(
    folder: str | os.PathLike,
    hf_config: dict,
    tensors,
    tokenizer_from: str | os.PathLike | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write config.json and model safetensors that transformers loads (process 0 writes).

    Shards are flushed as they fill, so host memory holds at most one shard of the model.
    """
    folder = Path(folder)
    writer = jax.process_index() == 0
    if writer:
        folder.mkdir(parents=True, exist_ok=True)
    shard: dict[str, np.ndarray] = {}
    shard_bytes, total, dtypes, written = 0, 0, set(), []

    def flush():
        name = f"model-{len(written) + 1:05d}.partial.safetensors"
        if writer:
            save_file(shard, str(folder / name), metadata={"format": "pt"})
        written.append((name, list(shard)))

    for key, arr in tensors:
        if shard and shard_bytes + arr.nbytes > max_shard_bytes:
            flush()
            shard, shard_bytes = {}, 0
        shard[key] = arr
        shard_bytes += arr.nbytes
        total += arr.nbytes
        dtypes.add(str(arr.dtype))
    flush()
    if not writer:
        return folder
    if len(written) == 1:
        os.replace(folder / written[0][0], folder / "model.safetensors")
    else:
        weight_map = {}
        for n, (partial, keys) in enumerate(written, 1):
            name = f"model-{n:05d}-of-{len(written):05d}.safetensors"
            os.replace(folder / partial, folder / name)
            weight_map.update({k: name for k in keys})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = dict(hf_config)
    config["dtype"] = "bfloat16" if dtypes == {"bfloat16"} else "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_from) / name
            if src.exists() and src.resolve() != (folder / name).resolve():
                shutil.copy(src, folder / name)
    return folder
