"""How to sample: the one type every generator takes (vLLM, the OpenAI client, the JAX sampler, the
procedural teacher), and the one config declaration of its fields.

Conventions (one each): temperature 0 = greedy; top_k 0 = off (engines translate to their backend's
spelling, e.g. vLLM's -1); top_p 1 = off; seed < 0 in a config = unseeded (None here); stop strings a tuple.
Ground floor: no package imports, no JAX, so the vLLM environment can use it.
"""

from __future__ import annotations

import dataclasses

from ml_collections import ConfigDict


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per request (K in the paper)
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    max_tokens: int = 4096  # completion tokens per sample
    seed: int | None = 0  # base seed; engines derive per-request seeds from it deterministically
    stop: tuple[str, ...] = ()  # stop strings (excluded from the text)
    stop_token_ids: tuple[int, ...] | None = None  # None = the model's EOS and end-of-turn ids

    def __post_init__(self):
        bad = []
        if not (isinstance(self.n, int) and self.n >= 1):
            bad.append(f"n={self.n!r} (>= 1)")
        if not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            bad.append(f"max_tokens={self.max_tokens!r} (>= 1)")
        if not self.temperature >= 0:
            bad.append(f"temperature={self.temperature!r} (>= 0)")
        if not 0 < self.top_p <= 1:
            bad.append(f"top_p={self.top_p!r} (in (0, 1])")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            bad.append(f"top_k={self.top_k!r} (>= 0, 0 = off)")
        if bad:
            raise ValueError(f"invalid sampling params: {', '.join(bad)}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def from_config(cls, cfg: ConfigDict, **overrides) -> "SamplingParams":
        """From a `sampling_config()` sub-config (seed < 0 = unseeded)."""
        fields = {f: cfg[f] for f in ("n", "temperature", "top_p", "top_k", "max_tokens", "seed", "stop")}
        fields["seed"] = None if fields["seed"] < 0 else fields["seed"]
        fields["stop"] = tuple(fields["stop"])
        fields.update(overrides)
        return cls(**fields)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        if d["stop_token_ids"] is not None:
            d["stop_token_ids"] = list(d["stop_token_ids"])
        return d


def sampling_config(**defaults) -> ConfigDict:
    """The sampling fields of a stage config, declared once; a stage passes its own defaults."""
    base = SamplingParams()
    c = ConfigDict()
    c.n = base.n  # samples per question
    c.temperature = base.temperature  # 0 = greedy
    c.top_p = base.top_p  # 1 = off
    c.top_k = base.top_k  # 0 = off
    c.max_tokens = base.max_tokens  # completion budget per sample
    c.seed = 0  # base seed (< 0: unseeded); per-request seeds derive from it
    c.stop = ()  # stop strings (command line: --config.x.stop='a|b' is not split; give a tuple)
    for k, v in defaults.items():
        if k not in c:
            raise KeyError(f"sampling_config: unknown field {k!r}")
        c[k] = v
    return c


def validate_sampling(config: ConfigDict, prefix: str) -> None:
    """Every field of the sampling sub-config at `prefix` ("sampling", "generation.sampling") of a stage
    config, each failure naming its dotted field."""
    from jax_distill import checks

    checks.is_type(config, f"{prefix}.n", int)
    checks.at_least(config, f"{prefix}.n", 1)
    checks.at_least(config, f"{prefix}.temperature", 0.0)
    checks.in_range(config, f"{prefix}.top_p", 0.0, 1.0, closed=True)
    checks.need(checks.get(config, f"{prefix}.top_p") > 0, f"{prefix}.top_p", "must be > 0")
    checks.is_type(config, f"{prefix}.top_k", int)
    checks.at_least(config, f"{prefix}.top_k", 0)
    checks.is_type(config, f"{prefix}.max_tokens", int)
    checks.at_least(config, f"{prefix}.max_tokens", 1)
    checks.is_type(config, f"{prefix}.seed", int)
    checks.is_type(config, f"{prefix}.stop", (tuple, list))
