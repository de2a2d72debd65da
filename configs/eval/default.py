"""Evaluate one student: `python -m jax_distill.evaluate --config configs/eval/default.py
--config.checkpoint=runs/x/export --config.output_dir=runs/x/eval` (see jax_distill/evaluate.py)."""

from ml_collections import ConfigDict

from jax_distill.problems.sources import default_config as problems_config


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.checkpoint = ""  # student HF folder (local or gs://), e.g. the training stage's export
    c.tokenizer = ""  # tokenizer folder; "" = the checkpoint's
    c.output_dir = ""  # eval_results.json and eval_samples.jsonl are written here
    c.dtype = "bfloat16"  # parameter dtype
    c.compute_dtype = ""  # activations; "" = dtype
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1 = all remaining devices

    c.problems = problems_config()  # the trace stage's problems: same sources, split and seed
    c.chat = ConfigDict(
        dict(  # how questions are rendered: must match the training data config
            system="",  # optional system message
            template="auto",  # chat (tokenizer's) | fallback (data/chat.py FALLBACK_TEMPLATE) | auto
            template_date="2026-01-01",
            template_kwargs="{}",  # JSON of extra template variables, e.g. {"reasoning_effort": "high"} (gpt-oss)
            end_of_turn="",
        )
    )
    c.generation = ConfigDict(
        dict(
            enabled=True,
            max_tokens=4096,  # completion budget; samples reaching it count as truncated
            temperature=0.0,  # 0 = greedy
            top_p=1.0,
            top_k=-1,  # -1 = off
            n=1,  # samples per question (accuracy is the mean over samples)
            seed=0,
            stop="",  # extra stop strings, "|"-separated (EOS always stops)
            batch_size=32,  # sequences per sampler call
            check_timeout_s=5.0,  # per-answer math-verify timeout
        )
    )
    c.multiple_choice = ConfigDict(
        dict(
            tasks="hellaswag,winogrande,piqa,arc_easy,boolq,truthfulqa_mc1,mmlu_humanities,mmlu_social_sciences,mmlu_other",
            data_dir="",  # <data_dir>/<task>.jsonl|json|parquet (MMLU groups read mmlu.*)
            files=ConfigDict(
                {k: "" for k in ("hellaswag", "winogrande", "piqa", "arc_easy", "boolq", "truthfulqa_mc1", "mmlu")}
            ),
            limit=0,  # documents per task (0 = all)
            batch_size=16,  # sequences per scoring call
            max_length=2048,  # context tokens (left-truncated beyond, as the harness does)
            strict=False,  # bad records raise (file:line, field) instead of being skipped and counted
        )
    )
    return c
