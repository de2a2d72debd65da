"""Config checks shared by every stage's `validate(config)`: each failure names the dotted field.

Ground floor: imports nothing from the package, so configs, stages and tests can all use it.
A stage's `validate` calls these before any work starts, e.g.

    def validate(c):
        checks.one_of(c, "method", ("lora", "full"))
        checks.at_least(c, "train.batch_size", 1)
        checks.in_range(c, "optim.warmup_frac", 0.0, 1.0)       # [0, 1)
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with `config.<field>:`."""


def get(cfg: Any, dotted: str) -> Any:
    """The value at a dotted path ("optim.lr") of a ConfigDict or nested dicts; KeyError names the path."""
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            raise KeyError(f"config.{dotted}: no such field") from None
    return node


def need(ok: bool, field: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {msg}")


def one_of(cfg: Any, field: str, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    value = get(cfg, field)
    need(value in choices, field, f"must be one of {', '.join(map(str, choices))}; got {value!r}")


def is_type(cfg: Any, field: str, types: type | tuple[type, ...]) -> None:
    value = get(cfg, field)
    types = types if isinstance(types, tuple) else (types,)
    # bool is an int in Python; a flag must not pass as a count
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    need(ok, field, f"must be {' or '.join(t.__name__ for t in types)}; got {type(value).__name__} {value!r}")


def at_least(cfg: Any, field: str, low: float) -> None:
    is_type(cfg, field, (int, float))
    value = get(cfg, field)
    need(value >= low, field, f"must be >= {low}; got {value!r}")


def positive(cfg: Any, field: str) -> None:
    is_type(cfg, field, (int, float))
    value = get(cfg, field)
    need(value > 0, field, f"must be > 0; got {value!r}")


def in_range(cfg: Any, field: str, low: float, high: float, *, closed: bool = False) -> None:
    """low <= value < high (value <= high when closed)."""
    is_type(cfg, field, (int, float))
    value = get(cfg, field)
    ok = low <= value <= high if closed else low <= value < high
    need(ok, field, f"must be in [{low}, {high}{']' if closed else ')'}; got {value!r}")


def exists(cfg: Any, field: str, *, what: str = "path", allow_empty: bool = False) -> None:
    """A local path that must exist (gs:// paths are checked where they are opened)."""
    value = get(cfg, field)
    if allow_empty and not value:
        return
    need(bool(value), field, f"must name a {what}")
    if not str(value).startswith("gs://"):
        need(os.path.exists(value), field, f"{what} {value!r} does not exist")


def as_list(value: Any, sep: str = ",") -> tuple[str, ...]:
    """A list field as a tuple of non-empty stripped strings; accepts a tuple/list or a "a,b" string
    (the friendlier command-line spelling, converted once here)."""
    if value is None:
        return ()
    items = value.split(sep) if isinstance(value, str) else value
    return tuple(s for s in (str(i).strip() for i in items) if s)


def json_object(value: Any, field: str) -> dict:
    """A dict-valued field (e.g. chat_template_kwargs) given as a JSON string ('{"enable_thinking": true}',
    friendly on the command line) or as a dict / ConfigDict; anything else fails naming the field."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value or "{}")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{field}: must be a JSON object; got {value!r}: {e}") from None
    need(isinstance(parsed, dict), field, f"must be a JSON object; got {value!r}")
    return parsed
