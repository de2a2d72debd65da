"""Training data: trace records -> chat-formatted, loss-masked, packed token batches (Grain).

  make_dataset(data_config, tokenizer, *, seq_len, batch_size, seed, process_index, process_count)
      -> (grain IterDataset of batches, DataStats)
  data_config() -> the ml_collections ConfigDict of data fields (embedded as `config.data`)
  validate(data_config) -> checks every field (ConfigError naming config.data.<field>)

See pipeline.py for the chain and the batch format, chat.py for the chat format and loss mask.
"""

from jax_distill.data.chat import FALLBACK_TEMPLATE, ChatFormat, DataError, chat_template, think_block
from jax_distill.data.pipeline import (
    SKIP_REASONS,
    DataStats,
    batch_stats,
    count_batches,
    data_config,
    example_dataset,
    make_dataset,
    validate,
)
from jax_distill.data.sources import RecordSource, resolve_files

__all__ = [
    "FALLBACK_TEMPLATE",
    "SKIP_REASONS",
    "ChatFormat",
    "DataError",
    "DataStats",
    "RecordSource",
    "batch_stats",
    "chat_template",
    "count_batches",
    "data_config",
    "example_dataset",
    "make_dataset",
    "resolve_files",
    "think_block",
    "validate",
]
