"""Paper recipe: student llama-3.1-8b, full fine-tuning (see jax_distill.training.config.paper_config).

  python -m jax_distill.train --config configs/train/llama_3_1_8b_full.py --config.model.path=<local or gs:// HF folder> \
      --config.data.path=<traces> --config.train.run_dir=<dir> --config.meta.teacher=... --config.meta.variant=...
"""

from jax_distill.training.config import paper_config


def get_config():
    return paper_config("llama-3.1-8b", "full")
