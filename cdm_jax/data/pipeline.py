"""A run's data: the corpus read, split and encoded with the workdir's tokenizer (or a prepared
folder opened), as one `Dataset` (`encoding` makes the rows, `batches` iterates them,
`fingerprint` guards the workdir's corpus)."""

import dataclasses
import logging

import numpy as np

from cdm_jax.data import corpora, encoding, packing, shards
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.data.fingerprint import check_fingerprint
from cdm_jax.runtime import distributed, fs

log = logging.getLogger(__name__)


def _pack_split(tokens: np.ndarray, name: str) -> np.ndarray:
  packed = packing.pack(tokens)
  log.info("%s: %d examples packed into %d windows (%.0f%% of positions were PAD).", name,
           len(tokens), len(packed), 100.0 * np.mean(tokens == tokenizer_lib.PAD_ID))
  return packed


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
  train_text, valid_text = encoding.split_examples(examples, data_config.valid_percent)

  def record_corpus_and_tokenizer():  # process 0 writes, the others then read
    check_fingerprint(examples, workdir)
    if not (fs.path(workdir) / tokenizer_lib.MODEL_FILE).is_file():
      tokenizer_lib.save_tokenizer(tokenizer_lib.train_tokenizer(
          encoding.texts_of(train_text), data_config.vocab_size, data_config.tokenizer_type), workdir)

  distributed.on_primary(record_corpus_and_tokenizer, "recording the corpus and tokenizer")
  tokenizer = tokenizer_lib.load_tokenizer(workdir)
  if tokenizer.get_piece_size() != data_config.vocab_size:
    raise ValueError(f"The tokenizer in {workdir} has {tokenizer.get_piece_size()} pieces but "
                     f"data.vocab_size={data_config.vocab_size}; use a new workdir.")
  train, _ = encoding.encode(tokenizer, train_text, data_config.seq_len, data_config.long_lines, "train")
  valid = np.zeros((0, data_config.seq_len), np.int32)
  if valid_text:
    valid, _ = encoding.encode(tokenizer, valid_text, data_config.seq_len, data_config.long_lines, "valid")
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
