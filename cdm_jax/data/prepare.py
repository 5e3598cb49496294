"""A corpus, read once, into token shards that training streams (`cdm_jax.data.shards`).

    cdm-prepare --config=configs/X.py --output=FOLDER [--config.data.a=b] [--tokenizer_sample=N]
    cdm-train --config=configs/X.py --config.data.prepared=FOLDER --workdir=DIR

The corpus (`data.corpus`, `data.path`, ...) is read as a stream, twice: first at most
`tokenizer_sample` training examples, on which the SentencePiece tokenizer is trained (so the
sample, not the corpus, bounds that step's memory and time), then every example once: split by the
same hash as the in-memory path, tokenized in batches on every core, framed BOS ... EOS (long lines
truncated, dropped or split into several rows per `data.long_lines`) and appended to the current shard, written whenever it reaches
`shard_tokens`. `manifest.json` is written last, atomically: a folder with one is complete, a
folder without one is an interrupted run, which a rerun clears and restarts. Rerunning a finished
folder with the same settings does nothing; with other settings it is an error.
"""

import array
import hashlib
import itertools
import json
import logging
import os

import numpy as np

from cdm_jax.core.tokens import BOS_ID, EOS_ID
from cdm_jax.data import corpora, encoding, packing, shards
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.runtime import fs

log = logging.getLogger(__name__)

SETTINGS = ("corpus", "path", "field", "hf_split", "max_examples", "valid_percent", "vocab_size",
            "tokenizer_type", "seq_len", "long_lines")


def settings_of(data_config, tokenizer_sample: int, shard_tokens: int) -> dict:
  """What makes a prepared folder: the corpus, its split, tokenizer and framing."""
  settings = {key: data_config[key] for key in SETTINGS}
  if settings["corpus"] in ("text", "jsonl") and settings["path"]:
    settings["path"] = str(fs.path(settings["path"]))
  settings.update(tokenizer_sample=tokenizer_sample, shard_tokens=shard_tokens)
  return settings


class _ShardWriter:
  """Appends framed examples of one split; writes a shard's three files whenever it is full."""

  def __init__(self, root, split: str, seq_len: int, shard_tokens: int, typecode: str):
    self.root, self.split, self.seq_len, self.shard_tokens = root, split, seq_len, shard_tokens
    self.typecode = typecode
    self.shards = []
    self._reset()

  def _reset(self):
    self.tokens, self.lengths = array.array(self.typecode), array.array("I")

  def add(self, framed: list[int]):
    self.tokens.extend(framed)
    self.lengths.append(len(framed))
    if len(self.tokens) >= self.shard_tokens:
      self.flush()

  def flush(self):
    if not self.lengths:
      return
    name = f"{self.split}-{len(self.shards):05d}"
    lengths = np.frombuffer(self.lengths, np.uint32)
    parts = {"tokens": np.frombuffer(self.tokens, np.dtype(self.typecode)),
             "index": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
             "windows": packing.window_starts(lengths, self.seq_len)}
    checksums = {}
    for part, values in parts.items():
      target = shards.shard_file(self.root, name, part)
      temporary = target.with_name(target.name + ".tmp")
      with open(temporary, "wb") as f:
        np.save(f, values)
      checksums[part] = shards.file_sha256(temporary)
      os.replace(temporary, target)
    self.shards.append({"name": name, "examples": len(lengths), "tokens": len(parts["tokens"]),
                        "windows": len(parts["windows"]), "sha256": checksums})
    self._reset()

  def summary(self) -> dict:
    return {key: sum(s[key] for s in self.shards) for key in ("examples", "tokens", "windows")} | {
        "shards": self.shards}


def _clear_interrupted(root):
  """Removes what an interrupted run left (shards, tokenizer, temporary files)."""
  stale = [p for p in root.iterdir() if p.name.endswith((".npy", ".tmp")) or p.name ==
           shards.TOKENIZER]
  if stale:
    log.warning("%s holds %d files of an interrupted run and no manifest: starting over.", root,
                len(stale))
  for path in stale:
    path.unlink()


def _finished(root, settings: dict, output: str) -> dict | None:
  path = root / shards.MANIFEST
  if not path.is_file():
    return None
  manifest = json.loads(path.read_text(encoding="utf-8"))
  if manifest.get("settings") != settings:
    differ = sorted(k for k in settings if manifest.get("settings", {}).get(k) != settings[k])
    raise ValueError(f"{root} was prepared with other settings (differing: {', '.join(differ)}); "
                     "prepare into a new folder.")
  shards.read_manifest(output)  # every shard present and whole
  log.info("%s is already prepared: nothing to do.", root)
  return manifest


def _train_tokenizer(stream, data_config, tokenizer_sample: int):
  sample = list(itertools.islice(
      (e for e in stream if not encoding.is_held_out(e, data_config.valid_percent)),
      tokenizer_sample))
  if not sample:
    raise ValueError(f"data.valid_percent={data_config.valid_percent} leaves no training examples.")
  log.info("Training the tokenizer on %d examples.", len(sample))
  return tokenizer_lib.train_tokenizer(sample, data_config.vocab_size, data_config.tokenizer_type)


def _stream(data_config):
  if data_config.get("source_field") or data_config.get("target_field") or \
      data_config.corpus in ("wordnet_definitions", "wordnet_reverse"):
    raise ValueError("Prepared folders hold plain-text corpora; a seq2seq corpus uses the "
                     "in-memory path (leave data.prepared empty).")
  return corpora.iter_corpus(data_config.corpus, data_config.path, data_config.field,
                             data_config.hf_split, data_config.max_examples)


def prepare(data_config, output: str, *, tokenizer_sample: int = 200_000,
            shard_tokens: int = 1 << 24, batch_examples: int = 8192) -> dict:
  """Prepares `data_config`'s corpus into `output` (see the module doc); returns the manifest."""
  if tokenizer_sample < 1 or shard_tokens < data_config.seq_len:
    raise ValueError("tokenizer_sample must be positive and shard_tokens at least data.seq_len.")
  root = shards.local_folder(output)
  settings = settings_of(data_config, tokenizer_sample, shard_tokens)
  done = _finished(root, settings, output)
  if done is not None:
    return done
  encoding.check_framing(data_config.seq_len, data_config.long_lines)
  root.mkdir(parents=True, exist_ok=True)
  _clear_interrupted(root)
  tokenizer = _train_tokenizer(_stream(data_config), data_config, tokenizer_sample)
  model = tokenizer.serialized_model_proto()
  fs.write_atomic(fs.path(str(root / shards.TOKENIZER)), model)
  typecode = "H" if data_config.vocab_size <= 1 << 16 else "I"
  writers = {split: _ShardWriter(root, split, data_config.seq_len, shard_tokens, typecode)
             for split in ("train", "valid")}
  digest, counts = hashlib.sha256(), {"read": 0, "truncated": 0, "dropped": 0, "split": 0}
  stream = _stream(data_config)
  while chunk := list(itertools.islice(stream, batch_examples)):
    for example, pieces in zip(chunk, tokenizer.encode(chunk, num_threads=os.cpu_count())):
      digest.update(example.encode("utf-8") + b"\n")
      try:
        fitted = encoding.fit_pieces(pieces, data_config.seq_len, data_config.long_lines)
      except ValueError as err:
        raise ValueError(f"example {counts['read']} {err}: {example[:80]!r}...") from None
      counts["read"] += 1
      if outcome := encoding.fit_outcome(pieces, fitted):
        counts[outcome] += 1
      split = "valid" if encoding.is_held_out(example, data_config.valid_percent) else "train"
      for chunk in fitted:
        writers[split].add([BOS_ID, *chunk, EOS_ID])
    log.info("%d examples read.", counts["read"])
  for writer in writers.values():
    writer.flush()
  if not writers["train"].shards:
    raise ValueError("No training examples left after encoding (see data.long_lines).")
  manifest = {"format": shards.FORMAT, "settings": settings,
              "tokenizer_sha256": shards.sha256(model), "corpus_sha256": digest.hexdigest(),
              **counts, "splits": {s: w.summary() for s, w in writers.items()}}
  fs.write_atomic(fs.path(str(root / shards.MANIFEST)), json.dumps(manifest, indent=1))
  log.info("Prepared %s: %d train / %d valid examples, %d train tokens in %d shards.", root,
           manifest["splits"]["train"]["examples"], manifest["splits"]["valid"]["examples"],
           manifest["splits"]["train"]["tokens"], len(writers["train"].shards))
  return manifest
