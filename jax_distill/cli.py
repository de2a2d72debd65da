"""One way to start every stage: `python -m jax_distill.<stage> --config configs/<x>.py [--config.a.b=v]`.

Configs are ml_collections files with `get_config()`. Two checks make a typo fail at start, naming the
field: the config file is compared field by field with the stage's declared `default_config()` (a field the
stage does not declare, or a value of another type, is an error with a did-you-mean), and the config is
locked, so an override of an unknown field or of the wrong type fails in absl's flag parser.
"""

from __future__ import annotations

from typing import Any, Callable

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import ConfigDict, config_flags

from jax_distill import checks


def run_stage(
    run: Callable[[ConfigDict], Any],
    declared: Callable[[], ConfigDict] | None = None,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> None:
    """Parse --config (+ overrides), check it against the stage's `declared()` config, and call
    `run(config)` under absl (needed by Grain workers)."""
    argv = list_overrides(sys.argv)  # ml_collections reads the override names from sys_argv, the values from argv
    config = config_flags.DEFINE_config_file("config", None, "ml_collections config file", flag_values=flag_values,
                                             sys_argv=argv)
    flags.mark_flag_as_required("config", flag_values=flag_values)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        # our progress at INFO; libraries (orbax, jax) only when they warn
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("jax_distill").setLevel(logging.INFO)
        try:
            if declared is not None:
                check_declared(config.value, declared(), flag_values["config"].config_filename)
        except checks.ConfigError as e:
            sys.stderr.write(f"FATAL config error: {e}\n")
            sys.exit(1)
        try:
            run(config.value)
        except Exception as e:  # the traceback, then one line naming the root cause (e.g. from a data worker)
            import traceback

            traceback.print_exc()
            sys.stderr.write(f"FATAL {root_cause(e)}\n")
            sys.exit(1)

    app.run(main, argv=argv, flags_parser=lambda argv: _parse_flags(flag_values, argv))


def root_cause(error: BaseException) -> str:
    """"Type: message" of the innermost exception of a chain, on one line. An error raised in a Grain
    worker process arrives re-raised with the worker's traceback in its message: its last line is the
    original "Type: message"."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    worker = [line for line in lines if ": " in line and line.split(": ", 1)[0].replace(".", "").isidentifier()]
    if len(lines) > 1 and worker:
        return worker[-1]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
    """absl parsing, but an override of an unknown config field exits with the field's dotted name
    (ml_collections raises a bare AttributeError/KeyError with the leaf name only)."""
    import re
    import sys

    try:
        return flag_values(argv)
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except (AttributeError, KeyError) as e:
        names = re.findall(r"'([^'\\]+)", str(e))
        hits = [a for a in argv[1:] if a.startswith("--config.") and any(n in a.split("=")[0].split(".") for n in names)]
        field = hits[0].split("=")[0][len("--config.") :] if hits else (names[0] if names else "?")
        hint = str(e).split("\\n")[-1].strip("'\"") if "Did you mean" in str(e) else ""
        sys.stderr.write(f"FATAL config error: unknown config field {field!r} ({hits[0] if hits else argv}). {hint}\n")
        sys.exit(1)


def list_overrides(argv: list[str]) -> list[str]:
    """`--config.variants=raw,compressed:x` -> the tuple literal ml_collections parses, for every override of
    a tuple (list) field of the config file (ml_collections alone would make it a 1-tuple "raw,compressed:x").
    Tuple literals ("('a', 'b')") pass unchanged."""
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if path is None and "--config" in argv[1:-1]:  # `--config <file>`, as the README spells it
        path = argv[argv.index("--config", 1) + 1]
    overrides = [a for a in argv[1:] if a.startswith("--config.") and "=" in a]
    if path is None or not overrides:
        return argv
    base = config_file(path)
    out = []
    for arg in argv:
        if arg in overrides:
            dotted, value = arg[len("--config.") :].split("=", 1)
            try:
                current = checks.get(base, dotted)
            except KeyError:
                current = None  # unknown fields fail in absl's parser with the field's name
            if isinstance(current, (tuple, list)) and not value.lstrip().startswith(("(", "[")):
                value = repr(list_value(value, current))
            arg = f"--config.{_subscript_names(dotted)}={value}"
        out.append(arg)
    return out


def _subscript_names(dotted: str) -> str:
    """students.tiny-qwen3.tiny.seed -> students["tiny-qwen3"].tiny.seed: ml_collections parses a flag's
    path as Python, so a name that is not an identifier (a student, teacher or compressor name with a
    hyphen) is written as a subscript, which it accepts."""
    if "[" in dotted:
        return dotted  # already in ml_collections' own spelling
    head, *rest = dotted.split(".")
    return head + "".join(f".{p}" if p.isidentifier() else f"[{p!r}]" for p in rest)


def list_value(text: str, current: tuple) -> tuple:
    """"a,b" as a tuple of the current tuple's element type (numbers stay numbers: seeds "0,1" -> (0, 1))."""
    items = checks.as_list(text)
    kinds = {type(v) for v in current}
    if kinds in ({int}, {float}):
        kind = kinds.pop()
        try:
            return tuple(kind(i) for i in items)
        except ValueError:
            raise checks.ConfigError(f"expected {kind.__name__}s separated by commas; got {text!r}") from None
    return items


def check_declared(cfg: Any, declared: Any, where: str, prefix: str = "") -> None:
    """Every field of `cfg` (a loaded config file) must be declared by the stage, with a value of the
    declared type, as a command-line override must. An empty declared ConfigDict is a free-form map
    (e.g. experiment `teachers`, `method_overrides`): its entries are not checked here."""
    import difflib

    if isinstance(declared, ConfigDict) and not declared.keys():
        return
    for key in cfg.keys():
        dotted = f"{prefix}{key}"
        if key not in declared:
            near = difflib.get_close_matches(key, list(declared.keys()), n=1)
            hint = f" Did you mean {prefix}{near[0]}?" if near else ""
            raise checks.ConfigError(f"config.{dotted}: {where} sets a field the stage does not declare.{hint}")
        value, want = cfg[key], declared[key]
        if isinstance(want, (ConfigDict, dict)):
            checks.need(isinstance(value, (ConfigDict, dict)), dotted, f"{where}: must be a section, got {value!r}")
            check_declared(value, want, where, f"{dotted}.")
        elif want is not None and value is not None and not _same_kind(value, want):
            raise checks.ConfigError(
                f"config.{dotted}: {where} sets {type(value).__name__} {value!r}; the stage declares "
                f"{type(want).__name__} (default {want!r})"
            )


def _same_kind(value: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(want, bool)
    if isinstance(want, float):
        return isinstance(value, (int, float))
    if isinstance(want, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(want))


def config_file(path: str) -> ConfigDict:
    """`get_config()` of a config file, "file.py:arg" passing arg (configs build on each other this way)."""
    import importlib.util

    file, _, arg = str(path).partition(":")
    spec = importlib.util.spec_from_file_location(f"_jax_distill_config_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def set_fields(cfg: ConfigDict, fields: dict[str, Any], where: str = "config") -> ConfigDict:
    """Set dotted fields ("optim.lr") in place; each must already exist, as on the command line."""
    for dotted, value in fields.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"{where}: unknown config field {dotted!r}")
        if isinstance(node[leaf], tuple) and isinstance(value, str):
            value = list_value(value, node[leaf])  # "a,b" is the friendly spelling of a list, as on the command line
        node[leaf] = value
    return cfg


def load_config(
    path: str, overrides: dict[str, Any] | None = None, declared: Callable[[], ConfigDict] | None = None
) -> ConfigDict:
    """A config file as the CLI would load it (checked against `declared()` when given), with dotted
    overrides applied (for in-process use)."""
    cfg = config_file(path)
    if declared is not None:
        check_declared(cfg, declared(), path)
    cfg.lock()
    return set_fields(cfg, overrides or {}, path)
