"""SentencePiece tokenizer, trained in-process on the training split and stored in the workdir."""

import io

import sentencepiece as spm
from etils import epath

from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from cdm_jax.runtime import fs

MODEL_FILE = "tokenizer.model"


def train_tokenizer(examples: list[str], vocab_size: int, model_type: str = "unigram",
                    character_coverage: float = 0.9995) -> spm.SentencePieceProcessor:
  """Trains a tokenizer; ids 0-3 are PAD, UNK, BOS, EOS."""
  if not (isinstance(vocab_size, int) and vocab_size > EOS_ID + 1):
    raise ValueError(f"data.vocab_size must be an integer above {EOS_ID + 1} (ids 0-{EOS_ID} are "
                     f"PAD, UNK, BOS and EOS), got {vocab_size!r}.")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(examples), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, pad_id=PAD_ID,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, minloglevel=2)
  except RuntimeError as err:
    if "smaller than required_chars" in str(err):
      raise ValueError(f"data.vocab_size={vocab_size} is too small for this corpus: its characters "
                       f"alone need more pieces ({str(err).split('.')[-3].strip()}). Raise "
                       "data.vocab_size.") from None
    if "Vocabulary size" in str(err) or "vocab_size" in str(err):
      raise ValueError(f"data.vocab_size={vocab_size} is too large for this corpus "
                       f"({len(examples)} examples): {err}. Lower data.vocab_size.") from None
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
