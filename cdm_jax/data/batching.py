"""The resumable, host-sharded batch iterator over token rows."""

import numpy as np

from cdm_jax.data import shards


class BatchIterator:
  """Endless shuffled global batches; yields this process's slice. Resumable via get/set_state.

  Epoch e uses the permutation of `default_rng(seed + e)`, or with `shuffle_window` the
  `shards.WindowedOrder` of (seed, e) (no N-long permutation: prepared corpora), so (epoch, index)
  fixes the stream. Each process reads only its own rows of each global batch.
  """

  def __init__(self, tokens, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, *, shuffle_window: int = 0):
    if global_batch % process_count:
      raise ValueError(f"Batch {global_batch} does not split over {process_count} processes.")
    if len(tokens) < global_batch:
      raise ValueError(f"Only {len(tokens)} training examples for a batch of {global_batch}.")
    self.tokens = tokens
    self.global_batch = global_batch
    self.seed = seed
    self.local = slice(process_index * global_batch // process_count,
                       (process_index + 1) * global_batch // process_count)
    self.epoch, self.index = 0, 0
    self._windowed = (shards.WindowedOrder(len(tokens), seed, shuffle_window)
                      if shuffle_window else None)
    self._order = self._permutation()

  def _permutation(self):
    if self._windowed is not None:
      return None
    return np.random.default_rng(self.seed + self.epoch).permutation(len(self.tokens))

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "index": self.index}

  def set_state(self, state: dict):
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
    self._order = self._permutation()

  def __iter__(self):
    return self

  def next_rows(self) -> np.ndarray:
    """The row numbers of this process's slice of the next global batch."""
    if self.index + self.global_batch > len(self.tokens):
      self.epoch, self.index = self.epoch + 1, 0
      self._order = self._permutation()
    if self._windowed is not None:
      rows = self._windowed.rows(self.epoch, self.index, self.global_batch)[self.local]
    else:
      rows = self._order[self.index:self.index + self.global_batch][self.local]
    self.index += self.global_batch
    return rows

  def __next__(self) -> np.ndarray:
    return self.tokens[self.next_rows()]
