"""Paper recipe: student qwen3.5-0.8b, full fine-tuning (see jax_distill.training.config.paper_config).

  python -m jax_distill.train --config configs/train/qwen3_5_0_8b_full.py --config.model.path=<local or gs:// HF folder> \
      --config.data.path=<traces> --config.train.run_dir=<dir> --config.meta.teacher=... --config.meta.variant=...
"""

from jax_distill.training.config import paper_config


def get_config():
    return paper_config("qwen3.5-0.8b", "full")
