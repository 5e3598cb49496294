"""SentencePiece tokenizer, trained in-process on the training split and stored in the workdir."""

import io
import re

import sentencepiece as spm
from etils import epath

from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from cdm_jax.runtime import fs

MODEL_FILE = "tokenizer.model"
# SentencePiece skips training sentences longer than this many bytes (its max_sentence_length is
# 4192); longer examples are cut into windows of whole words for the tokenizer's training.
WINDOW_BYTES = 4000


def training_windows(examples):
  """Each example as itself, or, when longer than WINDOW_BYTES in UTF-8, as consecutive windows
  of whole words (a word longer than a window is cut) that SentencePiece will not skip: a corpus
  of long documents trains a tokenizer like any other."""
  for text in examples:
    if len(text.encode("utf-8")) <= WINDOW_BYTES:
      yield text
      continue
    window, size = [], 0
    for word in re.findall(r"\S+", text):
      while len(word.encode("utf-8")) > WINDOW_BYTES:  # one enormous "word": cut it
        cut = word[:WINDOW_BYTES // 4]
        yield cut
        word = word[len(cut):]
      if size + len(word.encode("utf-8")) + 1 > WINDOW_BYTES and window:
        yield " ".join(window)
        window, size = [], 0
      window.append(word)
      size += len(word.encode("utf-8")) + 1
    if window:
      yield " ".join(window)


def train_tokenizer(examples: list[str], vocab_size: int, model_type: str = "unigram",
                    character_coverage: float = 0.9995) -> spm.SentencePieceProcessor:
  """Trains a tokenizer; ids 0-3 are PAD, UNK, BOS, EOS."""
  if not (isinstance(vocab_size, int) and vocab_size > EOS_ID + 1):
    raise ValueError(f"data.vocab_size must be an integer above {EOS_ID + 1} (ids 0-{EOS_ID} are "
                     f"PAD, UNK, BOS and EOS), got {vocab_size!r}.")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_windows(examples), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, pad_id=PAD_ID,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, minloglevel=2)
  except RuntimeError as err:
    if "smaller than required_chars" in str(err):
      raise ValueError(f"data.vocab_size={vocab_size} is too small for this corpus: its characters "
                       f"alone need more pieces ({str(err).split('.')[-3].strip()}). Raise "
                       "data.vocab_size.") from None
    if "Vocabulary size" in str(err) or "vocab_size" in str(err):
      limit = re.search(r"value <= (\d+)", str(err))
      raise ValueError(f"data.vocab_size={vocab_size} is too large for this corpus "
                       f"({len(examples)} examples"
                       f"{f'; it supports at most {limit.group(1)}' if limit else ''}): lower "
                       "data.vocab_size or use a larger corpus.") from None
    if "sentences_.empty()" in str(err):
      raise ValueError("The corpus has no text to train a tokenizer on (every training example "
                       "is empty); check data.path and data.field.") from None
    raise
  return spm.SentencePieceProcessor(model_proto=model.getvalue())


def save_tokenizer(tokenizer: spm.SentencePieceProcessor, workdir: str) -> epath.Path:
  path = fs.path(workdir) / MODEL_FILE
  fs.write_atomic(path, tokenizer.serialized_model_proto())  # never half a tokenizer after a crash
  return path


def load_tokenizer(workdir: str) -> spm.SentencePieceProcessor:
  path = fs.path(workdir) / MODEL_FILE
  if not path.is_file():
    raise FileNotFoundError(f"No tokenizer at {path}: is {workdir!r} a cdm_jax training workdir?")
  return spm.SentencePieceProcessor(model_proto=path.read_bytes())


def decode_tokens(tokenizer: spm.SentencePieceProcessor, tokens) -> str:
  """Text of one generated sequence: stops at the first EOS; drops BOS and PAD."""
  ids = []
  for token in (int(t) for t in tokens):
    if token == EOS_ID:
      break
    if token not in (PAD_ID, BOS_ID):
      ids.append(token)
  return tokenizer.decode(ids)
