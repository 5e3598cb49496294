"""From examples to fixed-length token arrays and a resumable, host-sharded batch iterator."""

import dataclasses
import hashlib
import json
import logging
import zlib

import numpy as np

from cdm_jax.runtime import distributed
from cdm_jax.runtime import config_record, fs
from cdm_jax.data import corpora
from cdm_jax.data import packing
from cdm_jax.data import shards
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


def _pack_split(tokens: np.ndarray, name: str) -> np.ndarray:
  packed = packing.pack(tokens)
  log.info("%s: %d examples packed into %d windows (%.0f%% of positions were PAD).", name,
           len(tokens), len(packed), 100.0 * np.mean(tokens == tokenizer_lib.PAD_ID))
  return packed


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


@dataclasses.dataclass
class Dataset:
  tokenizer: object        # sentencepiece.SentencePieceProcessor
  train: np.ndarray        # [num_train, seq_len] int32
  valid: np.ndarray        # [num_valid, seq_len] int32
  train_text: list         # the examples: strings, or (source, target) pairs (of a prepared
  valid_text: list         # corpus: its first PREPARED_TEXTS examples of each split, decoded)
  shuffle_window: int = 0  # > 0: train is a shards.PreparedSplit, shuffled in windows

  @property
  def is_seq2seq(self) -> bool:
    return bool(self.train_text) and corpora.is_pair(self.train_text[0])


FINGERPRINT_FILE = "data_fingerprint.json"


def check_fingerprint(examples: list, workdir: str, digest: str = "", count: int = 0):
  """Records a hash of the corpus in the workdir on first use; afterwards, a different corpus under
  the same workdir (edited file, other path, other max_examples) is an error, since its tokenizer,
  split and data position were made for the first one. `digest` and `count`: a prepared corpus's
  own (its examples are never held)."""
  digest = digest or hashlib.sha256(
      json.dumps(examples, ensure_ascii=False).encode("utf-8")).hexdigest()
  path = fs.path(workdir) / FINGERPRINT_FILE
  count = count or len(examples)
  record = {"sha256": digest, "examples": count}
  if path.is_file():
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved["sha256"] != digest and not config_record.has_checkpoint(workdir):
      log.warning("%s holds no checkpoint: the corpus record and tokenizer of a run that never "
                  "checkpointed are replaced.", workdir)
      tokenizer_file = fs.path(workdir) / tokenizer_lib.MODEL_FILE
      if tokenizer_file.exists():
        tokenizer_file.unlink()
    elif saved["sha256"] != digest:
      raise ValueError(
          f"The corpus differs from the one {workdir} was built on ({saved['examples']} examples "
          f"then, {count} now; sha256 {saved['sha256'][:12]} -> {digest[:12]}). Restore "
          "it, or train in a new workdir.")
    else:
      return
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.write_atomic(path, json.dumps(record))
  except OSError as err:  # a read-only workdir (e.g. evaluating someone else's run)
    log.warning("Could not record the corpus fingerprint in %s: %s", workdir, err)


PREPARED_TEXTS = 50_000


def _decoded(tokenizer, split: shards.PreparedSplit) -> list[str]:
  rows = split[np.arange(min(len(split), PREPARED_TEXTS))]
  return tokenizer.decode([[int(t) for t in row[1:list(row).index(tokenizer_lib.EOS_ID)]]
                           for row in rows])


def open_prepared(data_config, workdir: str) -> Dataset:
  """The Dataset of a prepared folder (`data.prepared`): its splits stay on disk; the held-out
  rows, and the first examples of each split as text (for the evaluation's references and
  novelty), are read into memory. The folder's tokenizer is copied into the workdir."""
  folder = data_config.prepared
  manifest = shards.read_manifest(folder)
  for key in ("seq_len", "vocab_size"):
    if manifest["settings"][key] != data_config[key]:
      raise ValueError(f"data.{key}={data_config[key]}, but {folder} was prepared with "
                       f"{key}={manifest['settings'][key]}: set it to match, or prepare again.")

  def record_corpus_and_tokenizer():
    check_fingerprint([], workdir, digest=manifest["corpus_sha256"] + manifest["tokenizer_sha256"],
                      count=manifest["read"])
    target = fs.path(workdir) / tokenizer_lib.MODEL_FILE
    if not target.is_file():
      fs.write_atomic(target, (shards.local_folder(folder) / shards.TOKENIZER).read_bytes())

  distributed.on_primary(record_corpus_and_tokenizer, "recording the corpus and tokenizer")
  tokenizer = tokenizer_lib.load_tokenizer(workdir)
  if shards.sha256(tokenizer.serialized_model_proto()) != manifest["tokenizer_sha256"]:
    raise ValueError(f"The tokenizer in {workdir} is not the one {folder} was prepared with; "
                     "use a new workdir.")
  packing = data_config.get("packing", False)
  train = shards.PreparedSplit(folder, manifest, "train", packing)
  valid_split = shards.PreparedSplit(folder, manifest, "valid", packing)
  valid = valid_split[np.arange(min(len(valid_split), PREPARED_TEXTS))]
  texts = {split: _decoded(tokenizer, shards.PreparedSplit(folder, manifest, split))
           for split in ("train", "valid")}
  log.info("Prepared corpus %s: %d train / %d valid rows, vocab %d.", folder, len(train),
           len(valid_split), tokenizer.get_piece_size())
  return Dataset(tokenizer, train, valid, texts["train"], texts["valid"],
                 shuffle_window=data_config.get("shuffle_window", 1 << 18))


def prepare_data(data_config, workdir: str) -> Dataset:
  """Reads the corpus, splits it, trains (or reloads from `workdir`) the tokenizer and encodes;
  with `data.prepared`, opens that folder instead (`open_prepared`).

  The tokenizer is trained once per workdir and reused by resumed runs and by sampling.
  """
  if data_config.get("prepared"):
    return open_prepared(data_config, workdir)
  pair_fields = None
  if data_config.get("source_field") or data_config.get("target_field"):
    pair_fields = (data_config.source_field, data_config.target_field)
    if not all(pair_fields):
      raise ValueError("A seq2seq corpus needs both data.source_field and data.target_field.")
  examples = corpora.read_corpus(data_config.corpus, data_config.path, data_config.field,
                                 data_config.hf_split, data_config.max_examples,
                                 pair_fields=pair_fields)
  train_text, valid_text = split_examples(examples, data_config.valid_percent)

  def record_corpus_and_tokenizer():  # process 0 writes, the others then read
    check_fingerprint(examples, workdir)
    if not (fs.path(workdir) / tokenizer_lib.MODEL_FILE).is_file():
      tokenizer_lib.save_tokenizer(tokenizer_lib.train_tokenizer(
          texts_of(train_text), data_config.vocab_size, data_config.tokenizer_type), workdir)

  distributed.on_primary(record_corpus_and_tokenizer, "recording the corpus and tokenizer")
  tokenizer = tokenizer_lib.load_tokenizer(workdir)
  if tokenizer.get_piece_size() != data_config.vocab_size:
    raise ValueError(f"The tokenizer in {workdir} has {tokenizer.get_piece_size()} pieces but "
                     f"data.vocab_size={data_config.vocab_size}; use a new workdir.")
  train, _ = encode(tokenizer, train_text, data_config.seq_len, data_config.long_lines, "train")
  valid = np.zeros((0, data_config.seq_len), np.int32)
  if valid_text:
    valid, _ = encode(tokenizer, valid_text, data_config.seq_len, data_config.long_lines, "valid")
  if data_config.get("packing", False):
    if corpora.is_pair(train_text[0]):
      raise ValueError("data.packing is for plain-text corpora; a seq2seq pair must stay one "
                       "sequence (set data.packing=False).")
    train = _pack_split(train, "train")
    if len(valid):
      valid = _pack_split(valid, "valid")
  log.info("Corpus %s: %d train / %d valid examples, vocab %d.", data_config.corpus,
               len(train), len(valid), tokenizer.get_piece_size())
  return Dataset(tokenizer, train, valid, train_text, valid_text)
