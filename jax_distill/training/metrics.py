"""Per-step metrics: a progress line, metrics.jsonl and TensorBoard (process 0 writes).

tokens/s counts real (non-pad) tokens; MFU is an estimate: 6 * trained-through parameters per token
(forward + backward; 4 * frozen + 6 * trainable in LoRA mode since frozen weights need no weight
gradient) plus attention's 12 * layers * width * seq_len, over the device's peak bf16 FLOP/s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax

# Dense bf16 peak FLOP/s per device, by substring of jax's device_kind.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "v6": 918e12,
    "v5p": 459e12,
    "v5 lite": 197e12,
    "v5e": 197e12,
    "v4": 275e12,
}


def peak_flops(override: float = 0.0) -> float | None:
    if override > 0:
        return override
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def flops_per_token(frozen_params: int, trainable_params: int, num_layers: int, width: int, seq_len: int) -> float:
    return 4.0 * frozen_params + 6.0 * trainable_params + 12.0 * num_layers * width * seq_len


class MetricsWriter:
    def __init__(self, run_dir: str, total_steps: int, flops_token: float, peak: float | None, log_every: int = 1,
                 resumed_step: int = 0):
        self.total_steps = total_steps
        self.flops_token = flops_token
        self.peak = peak
        self.log_every = max(log_every, 1)
        self.writer = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        if self.writer:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            path = Path(run_dir) / "metrics.jsonl"
            cut_rows(path, resumed_step)
            self.jsonl = open(path, "a", buffering=1)
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resumed_step + 1)
        self.start = time.perf_counter()
        self.last = self.start

    def write(self, step: int, metrics: dict, tokens_per_host_step: float | None = None) -> dict:
        """Record step `step` (1-based, after the update); returns the row written."""
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        row = {k: float(v) for k, v in metrics.items()}
        row["step"] = step
        row["step_time_s"] = dt
        row["tokens_per_s"] = row["tokens"] / dt if dt > 0 else 0.0
        if self.peak:
            row["mfu"] = row["tokens_per_s"] / row["packing"] * self.flops_token / (self.peak * jax.device_count()) if row["packing"] else 0.0
        if not self.writer:
            return row
        self.jsonl.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                self.tb.add_scalar(f"train/{k}", v, step)
        self.tb.flush()  # on disk with its metrics.jsonl row: a kill -9 loses neither
        if step % self.log_every == 0 or step == self.total_steps:
            elapsed = now - self.start
            eta = elapsed / max(step, 1) * (self.total_steps - step)
            mfu = f" mfu {row['mfu']:.1%}" if "mfu" in row else ""
            print(
                f"step {step}/{self.total_steps} loss {row['loss']:.4f} lr {row['lr']:.2e} gnorm {row['grad_norm']:.3f} "
                f"tok/s {row['tokens_per_s']:.0f} packing {row['packing']:.1%}{mfu} eta {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        return row

    def close(self):
        if self.writer:
            self.jsonl.close()
            self.tb.close()


def cut_rows(path: Path, last_step: int) -> None:
    """Keep the rows of steps <= last_step (a line cut off by a kill is dropped with them); atomic."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except ValueError:  # the half-written line of a killed run: always after the restored step
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
