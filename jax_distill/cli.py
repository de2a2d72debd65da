"""One way to start every stage: `python -m jax_distill.<stage> --config configs/<x>.py [--config.a.b=v]`.

Configs are ml_collections files with `get_config()`; the config is locked, so an override of an unknown
field or of the wrong type fails at start with the field's name (absl's flag error).
"""

from __future__ import annotations

from typing import Any, Callable

from absl import app, flags
from ml_collections import ConfigDict, config_flags


def run_stage(run: Callable[[ConfigDict], Any], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Parse --config (+ overrides) and call `run(config)` under absl (needed by Grain workers)."""
    config = config_flags.DEFINE_config_file("config", None, "ml_collections config file", flag_values=flag_values)
    flags.mark_flag_as_required("config", flag_values=flag_values)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        run(config.value)

    app.run(main)


def load_config(path: str, overrides: dict[str, Any] | None = None) -> ConfigDict:
    """A config file as the CLI would load it, with dotted overrides applied (for in-process use)."""
    import importlib.util

    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_jax_distill_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(arg) if arg else module.get_config()
    cfg.lock()
    for dotted, value in (overrides or {}).items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"{path}: unknown config field {dotted!r}")
        node[leaf] = value
    return cfg
