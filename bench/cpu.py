"""Our train step and sampler against transformers (+ peft) on the CPU this runs on, in one process.

  .venv/bin/python bench/cpu.py [--only train|sample] [--shape bench|demo] [--rounds N] [--quick]

Both sides start from the same random weights: a transformers model built in memory (no hub) is saved
to a temporary folder and our side loads it with `models.from_pretrained` (hf_io). Every measurement is
repeated `--rounds` times, the two sides alternating (which one goes first alternates too), after one
warm-up call each (compilation, allocator) that is not counted; the table gives the median tokens/s of
each side and the ratio ours / theirs of the medians (and of the best rounds), with the load average. Shapes (`--shape`):

  bench  the issue's small Llama: hidden 256, 4 layers, 4 heads / 2 kv heads (head_dim 64), MLP 768,
         vocab 8192, untied lm_head, rope theta 5e5; train batch 8 x 256
  demo   the embedded demo's student (configs/experiment/demo.py): Qwen3, hidden 128, 3 layers, 4/2 heads
         (head_dim 32), MLP 352, vocab 384, tied; train batch 8 x 512, loss_chunk 32 as the demo runs

Train recipes (one optimizer step per call: forward, backward, global-norm clip 1.0, AdamW update):
  paper  ours: bf16 compute, 8-bit AdamW (training/optim.py), fp32 master weights (LoRA: bf16 frozen
         base, fp32 adapters), as configs/train/paper.py. theirs: torch.autocast(bf16) over fp32 master
         weights (LoRA: bf16 base weights, peft's fp32 adapters), torch.optim.AdamW with fp32 moments
         (bitsandbytes' 8-bit AdamW has no CPU kernel, so torch keeps the cheaper fp32 update)
  fp32   both sides fp32 weights and compute, plain AdamW (optax.scale_by_adam / torch.optim.AdamW)
LoRA on all seven projections (bench: r 64, alpha 32, dropout 0.05 as the paper; demo: r 16, alpha 32,
dropout 0 as the demo). No remat, no gradient accumulation on either side. Batch rows are full-length
random tokens; ours runs its packed-row mask (one segment a row), transformers its default (sdpa) causal
attention with labels = input ids.

Sampler: greedy, EOS disabled (no stop ids on our side, eos_token_id None for generate), fixed prompt
and new-token counts, fp32 weights (what the demo's CPU evaluation runs); ours `Sampler.generate`,
theirs `model.generate` (default attention, dynamic cache). Prints one JSON line per measurement and the
markdown tables at the end; `same_tokens` is the fraction of generated tokens the two sides agree on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHAPES = {
    "bench": dict(
        hf=dict(architectures=["LlamaForCausalLM"], vocab_size=8192, hidden_size=256, intermediate_size=768,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=2048),
        batch=8, seq=256, loss_chunk=0, lora=dict(rank=64, alpha=32.0, dropout=0.05),
    ),
    "demo": dict(
        hf=dict(architectures=["Qwen3ForCausalLM"], vocab_size=384, hidden_size=128, intermediate_size=352,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=1024),
        batch=8, seq=512, loss_chunk=32, lora=dict(rank=16, alpha=32.0, dropout=0.0),
    ),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 1e-4
PAUSE_S = 0.5


def hf_folder(shape: dict, folder: str) -> str:
    """A transformers model with random weights (norms perturbed so none is a no-op), saved as an HF folder."""
    import torch
    import transformers

    fields = dict(shape["hf"])
    arch = fields.pop("architectures")[0]
    cls = transformers.LlamaConfig if arch.startswith("Llama") else transformers.Qwen3Config
    cfg = cls(**fields, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    cfg.architectures = [arch]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def random_tokens(vocab: int, batch: int, length: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(1, vocab, (batch, length)).astype(np.int32)


# ----------------------------------------------------------------------------- train step


def our_train(folder: str, shape: dict, method: str, recipe: str):
    """One call = one jitted optimizer step of jax_distill.train's own step function on a fixed batch."""
    import jax
    import numpy as np

    from jax_distill import train as train_lib
    from jax_distill.parallel.sharding import ShardingRules, make_mesh
    from jax_distill.training import optim
    from jax_distill.training import state as state_lib
    from jax_distill.training import student as student_lib
    from jax_distill.training.config import default_config

    c = default_config()
    c.model.path = folder
    c.method = method
    paper = recipe == "paper"
    c.model.compute_dtype = "bfloat16" if paper else "float32"
    c.model.param_dtype = "bfloat16" if paper and method == "lora" else "float32"
    c.optim.name = "adamw_8bit" if paper else "adamw"
    c.optim.lr, c.optim.warmup_frac = LR, 0.0
    c.lora.rank, c.lora.alpha, c.lora.dropout = (shape["lora"][k] for k in ("rank", "alpha", "dropout"))
    B, T = shape["batch"], shape["seq"]
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    rules = ShardingRules(mesh)
    stu = student_lib.load(c.model, c.method, c.lora, rules, seed=0)
    trainable, frozen = stu.split(stu.model.params)
    tx, schedule = optim.make(c.optim, 1000)
    state, state_sh = train_lib._initial_state(stu, trainable, tx, mesh, seed=0)
    batch_sh = rules.sharding(("batch", "seq"), (B, T))
    step_fn = state_lib.jit_train_step(
        state_lib.make_train_step(stu.model.module, stu.model.config, tx, schedule, remat="none",
                                  dropout=stu.lora is not None and stu.lora.dropout > 0, rules=rules,
                                  loss_chunk=shape["loss_chunk"]),
        state_sh, stu.split(stu.shardings)[1], batch_sh, mesh,
    )
    ids = random_tokens(shape["hf"]["vocab_size"], B, T + 1)
    host = dict(tokens=ids[:, :-1], targets=ids[:, 1:], positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
                segment_ids=np.ones((B, T), np.int32), loss_mask=np.ones((B, T), np.int32))
    batch = {k: jax.device_put(np.ascontiguousarray(v), batch_sh) for k, v in host.items()}
    box = [state]

    def call():
        box[0], m = step_fn(box[0], frozen, batch)
        return float(m["loss"])  # waits for the step

    return call


def their_train(folder: str, shape: dict, method: str, recipe: str):
    """One call = forward + backward + clip + torch.optim.AdamW step of transformers (+ peft)."""
    import contextlib

    import torch
    import transformers

    paper = recipe == "paper"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if method == "lora":
        import peft

        if paper:
            model = model.to(torch.bfloat16)  # the frozen base in bf16, as ours; peft keeps adapters fp32
        lc = shape["lora"]
        model = peft.get_peft_model(model, peft.LoraConfig(r=lc["rank"], lora_alpha=lc["alpha"],
                                                           lora_dropout=lc["dropout"], target_modules=LORA_TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ids = torch.as_tensor(random_tokens(shape["hf"]["vocab_size"], shape["batch"], shape["seq"]), dtype=torch.long)

    def call():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if paper else contextlib.nullcontext()
        with ctx:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return call


# ----------------------------------------------------------------------------- sampler


def our_sampler(folder: str, prompts, new: int):
    import jax.numpy as jnp

    from jax_distill.models import from_pretrained
    from jax_distill.sampling import Sampler
    from jax_distill.sampling_params import SamplingParams

    class Tok:  # ids in, ids out: the sampler decodes text only for stop strings, and there are none
        pad_token_id, eos_token_id = 0, None

        def decode(self, ids, skip_special_tokens=False):
            return ""

    sampler = Sampler(from_pretrained(folder, dtype=jnp.float32), Tok())
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=new, stop_token_ids=())
    rows = prompts.tolist()

    def call():
        out = sampler.generate(rows, params)
        assert out.lengths == [new] * len(rows), out.lengths
        return out.token_ids

    return call


def their_sampler(folder: str, prompts, new: int):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    ids = torch.as_tensor(prompts, dtype=torch.long)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
              pad_token_id=0)

    def call():
        with torch.no_grad():
            out = model.generate(ids, **kw)
        assert out.shape[1] == ids.shape[1] + new
        return out[:, ids.shape[1]:].tolist()

    return call


# ----------------------------------------------------------------------------- timing


def race(ours, theirs, tokens_per_call: int, calls: int, rounds: int) -> dict:
    """Warm-up once each, then `rounds` alternating rounds of `calls` calls: the median (and best) tokens/s
    per side. A pause before each side lets the other's worker threads go idle (torch's two OpenMP
    threads lose most of their speed while any other thread holds a core). `load` is the 1-minute load
    average before and after: on a shared machine, numbers taken under load (> nproc) mean little."""
    load_before = os.getloadavg()[0]
    first = {"ours": ours(), "theirs": theirs()}
    rates = {"ours": [], "theirs": []}
    for r in range(rounds):
        order = [("ours", ours), ("theirs", theirs)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            rates[name].append(tokens_per_call * calls / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    return dict(ours_tok_s=round(med["ours"], 1), theirs_tok_s=round(med["theirs"], 1),
                ratio=round(med["ours"] / med["theirs"], 2), ratio_best=round(best["ours"] / best["theirs"], 2),
                rounds=rounds, calls_per_round=calls, load=[round(load_before, 1), round(os.getloadavg()[0], 1)],
                rates={k: [round(x, 1) for x in v] for k, v in rates.items()}, first=first)


def train_part(folder, shape, args) -> list[dict]:
    rows = []
    tokens = shape["batch"] * shape["seq"]
    calls = 1 if args.quick else args.train_calls
    for method in ("lora", "full"):
        for recipe in ("paper", "fp32"):
            res = race(our_train(folder, shape, method, recipe), their_train(folder, shape, method, recipe),
                       tokens, calls, args.rounds)
            first = res.pop("first")
            res = dict(part="train", method=method, recipe=recipe, batch=shape["batch"], seq=shape["seq"],
                       first_loss_ours=round(first["ours"], 4), first_loss_theirs=round(first["theirs"], 4), **res)
            print(json.dumps(res), flush=True)
            rows.append(res)
    return rows


def sample_part(folder, shape, args) -> list[dict]:
    rows = []
    for batch in args.sample_batches:
        prompts = random_tokens(shape["hf"]["vocab_size"], batch, args.prompt, seed=1)
        res = race(our_sampler(folder, prompts, args.new), their_sampler(folder, prompts, args.new), batch * args.new,
                   1, args.rounds)
        first = res.pop("first")
        same = sum(a == b for x, y in zip(first["ours"], first["theirs"]) for a, b in zip(x, y)) / (batch * args.new)
        res = dict(part="sample", batch=batch, prompt=args.prompt, new_tokens=args.new, same_tokens=round(same, 3), **res)
        print(json.dumps(res), flush=True)
        rows.append(res)
    return rows


def machine() -> dict:
    import jax
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import peft

    return dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), nproc=os.cpu_count(), cpu=cpu,
                python=platform.python_version(), jax=jax.__version__, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), transformers=transformers.__version__, peft=peft.__version__,
                git=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                   cwd=os.path.dirname(__file__)).stdout.strip())


def tables(rows: list[dict]) -> str:
    out = []
    train = [r for r in rows if r["part"] == "train"]
    if train:
        out += ["| method | recipe | batch x seq | ours tok/s | transformers tok/s | ours / theirs (median) | (best) | load |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['method']} | {r['recipe']} | {r['batch']} x {r['seq']} | {r['ours_tok_s']} | {r['theirs_tok_s']} "
                f"| {r['ratio']}x | {r['ratio_best']}x | {r['load'][0]}-{r['load'][1]} |" for r in train]
        out.append("")
    sample = [r for r in rows if r["part"] == "sample"]
    if sample:
        out += ["| batch | prompt + new | ours tok/s | generate tok/s | ours / theirs (median) | (best) | same tokens | load |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['batch']} | {r['prompt']} + {r['new_tokens']} | {r['ours_tok_s']} | {r['theirs_tok_s']} "
                f"| {r['ratio']}x | {r['ratio_best']}x | {r['same_tokens']} | {r['load'][0]}-{r['load'][1]} |" for r in sample]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("train", "sample"), default=None)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train-calls", type=int, default=3, help="optimizer steps per side per round")
    ap.add_argument("--sample-batches", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (sampler)")
    ap.add_argument("--new", type=int, default=128, help="generated tokens per row (sampler)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, short batches and generations")
    args = ap.parse_args()
    shape = dict(SHAPES[args.shape])
    if args.quick:
        args.rounds, args.prompt, args.new = 1, 16, 8
        shape["seq"] = 64
    print(json.dumps(dict(machine(), command=" ".join(["bench/cpu.py", *sys.argv[1:]]), shape=args.shape)), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = hf_folder(shape, tmp)
        if args.only in (None, "sample"):
            rows += sample_part(folder, shape, args)
        if args.only in (None, "train"):
            rows += train_part(folder, shape, args)
    print(tables(rows))


if __name__ == "__main__":
    main()
