"""From examples to fixed-length token arrays: the held-out split by hash, framing (BOS pieces EOS,
then PAD) and what to do with examples longer than a row."""

import dataclasses
import logging
import zlib

import numpy as np

from cdm_jax.data import corpora
from cdm_jax.data import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)


def split_examples(examples: list, valid_percent: float) -> tuple[list, list]:
  """Deterministic split by a hash of the text (of a pair: of its source): an example's side never
  depends on the others, and the same source never sits on both sides."""
  train, valid = [], []
  for example in examples:
    (valid if is_held_out(example, valid_percent) else train).append(example)
  if not train:
    raise ValueError(f"data.valid_percent={valid_percent} leaves no training examples.")
  return train, valid


def is_held_out(example, valid_percent: float) -> bool:
  """The side of `split_examples`, decided by the example alone."""
  key = example[0] if corpora.is_pair(example) else example
  return zlib.crc32(key.encode("utf-8")) % 10_000 < valid_percent * 100


LONG_LINES = ("truncate", "drop", "error", "split")


def fit_pieces(pieces: list[int], seq_len: int, long_lines: str) -> list[list[int]]:
  """The pieces of each row an example becomes, between BOS and EOS: all of them in one row when
  they fit seq_len - 2; else the first seq_len - 2 (`truncate`), no row (`drop`), consecutive
  chunks of seq_len - 2, every row framed by BOS and EOS (`split`); `error` raises ValueError."""
  limit = seq_len - 2
  if len(pieces) <= limit:
    return [pieces]
  if long_lines == "error":
    raise ValueError(f"has {len(pieces)} tokens > {limit} (data.seq_len - 2)")
  if long_lines == "split":
    return [pieces[start:start + limit] for start in range(0, len(pieces), limit)]
  return [] if long_lines == "drop" else [pieces[:limit]]


def fit_outcome(pieces: list[int], fitted: list[list[int]]) -> str | None:
  """What `fit_pieces` did to an example: "dropped", "split", "truncated" or None (it fit)."""
  if not fitted:
    return "dropped"
  if len(fitted) > 1:
    return "split"
  return "truncated" if len(fitted[0]) < len(pieces) else None


def check_framing(seq_len: int, long_lines: str):
  if long_lines not in LONG_LINES:
    raise ValueError(f"data.long_lines must be one of {', '.join(LONG_LINES)}, got "
                     f"{long_lines!r}.")
  if seq_len < 3:
    raise ValueError(f"data.seq_len must be at least 3 (BOS, a token, EOS), got {seq_len}.")


@dataclasses.dataclass
class EncodeStats:
  examples: int = 0
  truncated: int = 0
  dropped: int = 0
  split: int = 0


def texts_of(examples: list) -> list[str]:
  """Every string of the examples (both sides of pairs): what the tokenizer trains on."""
  return [text for e in examples for text in (e if corpora.is_pair(e) else (e,))]


def _pieces(tokenizer, examples: list) -> list[list[int]]:
  """Pieces of each text; of a pair: source pieces, EOS, target pieces."""
  if not examples or not corpora.is_pair(examples[0]):
    return tokenizer.encode(examples)
  sources = tokenizer.encode([s for s, _ in examples])
  targets = tokenizer.encode([t for _, t in examples])
  return [src + [tokenizer_lib.EOS_ID] + tgt for src, tgt in zip(sources, targets)]


def encode(tokenizer, examples: list, seq_len: int, long_lines: str = "truncate",
           name: str = "data") -> tuple[np.ndarray, EncodeStats]:
  """[num_examples, seq_len] int32: BOS, pieces, EOS, then PAD; a (source, target) pair is
  BOS, source, EOS, target, EOS, then PAD (the seq2seq layout `conditioning` samples from).

  Lines longer than seq_len - 2 pieces are truncated (keeping the EOS), dropped, split into
  several rows, or raise, per `long_lines` (`split` is for plain text: a pair stays one row); the
  counts are logged.
  """
  check_framing(seq_len, long_lines)
  if long_lines == "split" and examples and corpora.is_pair(examples[0]):
    raise ValueError("data.long_lines=split is for plain-text corpora; a seq2seq pair must stay "
                     "one row (truncate, drop or error).")
  ids = _pieces(tokenizer, examples)
  stats = EncodeStats()
  rows = []
  for number, pieces in enumerate(ids):
    try:
      fitted = fit_pieces(pieces, seq_len, long_lines)
    except ValueError as err:
      raise ValueError(f"{name}: example {number} {err}: {examples[number][:80]!r}...") from None
    if outcome := fit_outcome(pieces, fitted):
      setattr(stats, outcome, getattr(stats, outcome) + 1)
    for chunk in fitted:
      row = np.full((seq_len,), tokenizer_lib.PAD_ID, np.int32)
      row[0] = tokenizer_lib.BOS_ID
      row[1:len(chunk) + 1] = chunk
      row[len(chunk) + 1] = tokenizer_lib.EOS_ID
      rows.append(row)
  stats.examples = len(rows)
  for outcome in ("truncated", "dropped", "split"):
    if count := getattr(stats, outcome):
      log.warning("%s: %d of %d examples longer than %d tokens were %s.", name, count, len(ids),
                  seq_len - 2, outcome)
  if not rows:
    raise ValueError(f"{name}: no examples left after encoding.")
  return np.stack(rows), stats


def piece_lengths(tokens: np.ndarray) -> np.ndarray:
  """The pieces between BOS and the first EOS of each `BOS pieces EOS PAD...` row [N, seq_len]; a
  row without EOS (cut at seq_len) counts to its end."""
  tokens = np.asarray(tokens)
  is_eos = tokens == tokenizer_lib.EOS_ID
  ends = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), tokens.shape[1])
  return (ends - 1).astype(np.int64)


def draw_lengths(tokens: np.ndarray, num: int, seed: int = 0) -> np.ndarray:
  """`num` piece counts drawn (with replacement, seeded) from the empirical length distribution of
  training rows `tokens` (see `piece_lengths`); rows of length 0 are left out."""
  lengths = piece_lengths(tokens)
  lengths = lengths[lengths >= 1]
  if not lengths.size:
    raise ValueError("No row with at least one piece between BOS and EOS to draw lengths from.")
  return np.random.default_rng(seed).choice(lengths, size=num)
