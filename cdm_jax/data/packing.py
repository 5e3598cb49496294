"""Packing: encoded examples laid end to end into PAD-free windows of seq_len tokens, each window
starting at an example's BOS (the in-memory `pipeline` and the prepared shards use the same rule)."""

import numpy as np

from cdm_jax.core.tokens import PAD_ID


def pack(rows: np.ndarray) -> np.ndarray:
  """Encoded examples ([num_examples, seq_len], BOS ... EOS then PAD) packed into windows with no
  PAD: each window starts at an example's BOS and takes the following examples whole, in order,
  while they fit; the first that does not fit fills the window's end with its head and starts the
  next window whole. So every example appears once complete, a window's first segment is always a
  complete example (what sampling decodes: the text up to the first EOS), and only the last window
  may end in PAD. Neighbours stay neighbours (in WordNet, glosses and examples of related senses).
  """
  seq_len = rows.shape[1]
  lengths = np.sum(rows != PAD_ID, axis=1)
  flat = rows[rows != PAD_ID]  # the examples end to end (PAD only trails a row)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  starts = window_starts(lengths, seq_len)
  windows = np.full((len(starts), seq_len), PAD_ID, np.int32)
  for window, first in zip(windows, starts):
    piece = flat[offsets[first]:offsets[first] + seq_len]
    window[:len(piece)] = piece
  return windows


def window_starts(lengths, seq_len: int) -> np.ndarray:
  """The example each packed window of `pack` starts at, from the examples' lengths (BOS to EOS):
  a window takes `seq_len` tokens of the examples end to end from there."""
  starts, first = [], 0
  while first < len(lengths):
    starts.append(first)
    filled, index = 0, first
    while index < len(lengths) and filled < seq_len:
      take = min(int(lengths[index]), seq_len - filled)
      filled += take
      if take < lengths[index]:
        break  # cut: this example starts the next window
      index += 1
    first = index
  return np.asarray(starts, np.int64)
