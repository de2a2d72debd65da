"""Paper recipe: student gpt-oss-20b, lora fine-tuning (see jax_distill.training.config.paper_config).

  python -m jax_distill.train --config configs/train/gpt_oss_20b_lora.py --config.model.path=<local or gs:// HF folder> \
      --config.data.path=<traces> --config.train.run_dir=<dir> --config.meta.teacher=... --config.meta.variant=...
"""

from jax_distill.training.config import paper_config


def get_config():
    return paper_config("gpt-oss-20b", "lora")
