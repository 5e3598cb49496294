"""Prepared corpora: token shards on disk, read without loading them, and a windowed shuffle.

A prepared folder (written once by `cdm_jax.data.prepare`) holds

  manifest.json           written last: the settings, the tokenizer's sha256 and, per split,
                          its shards and counts; a folder without it is not prepared
  tokenizer.model         SentencePiece, trained on a bounded sample of the training side
  {split}-{i:05d}.tokens.npy   the split's examples end to end, BOS ... EOS each (uint16/uint32)
  {split}-{i:05d}.index.npy    int64 offsets of the examples in the tokens (examples + 1)
  {split}-{i:05d}.windows.npy  int64 first example of each packed window (`packing.pack`)

Shards are memory-mapped: a process reads the rows it draws and nothing else, so start-up and
host memory do not grow with the corpus. `PreparedSplit` looks like the in-memory [N, seq_len]
array to `batching.BatchIterator` (len, shape, fancy indexing); `WindowedOrder` is its shuffle.
"""

import hashlib
import json
import pathlib

import numpy as np

from cdm_jax.core.tokens import PAD_ID
from cdm_jax.runtime import fs

FORMAT = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
PARTS = ("tokens", "index", "windows")


def shard_file(folder: pathlib.Path, name: str, part: str) -> pathlib.Path:
  return folder / f"{name}.{part}.npy"


def local_folder(folder: str) -> pathlib.Path:
  """A prepared folder must be on a local (or mounted) disk: shards are memory-mapped."""
  if fs.is_remote(folder):
    raise ValueError(f"{folder}: prepared shards are memory-mapped, so they must be on a local or "
                     "mounted disk (e.g. gcsfuse, or `gsutil -m cp -r` to the VM first).")
  return pathlib.Path(str(fs.path(folder)))


def read_manifest(folder: str) -> dict:
  """The folder's manifest, checked against its files; a one-line ValueError names what is wrong
  (and nothing is changed)."""
  root = local_folder(folder)
  path = root / MANIFEST
  if not path.is_file():
    raise ValueError(f"{root} is not a prepared corpus (no {MANIFEST}): run "
                     f"`cdm-prepare --config=... --output={root}` first, or finish an interrupted "
                     "run by running it again.")
  manifest = json.loads(path.read_text(encoding="utf-8"))
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path} has format {manifest.get('format')!r}; this version reads {FORMAT}.")
  tokenizer = root / TOKENIZER
  if not tokenizer.is_file() or sha256(tokenizer.read_bytes()) != manifest["tokenizer_sha256"]:
    raise ValueError(f"{tokenizer} is missing or is not the tokenizer {MANIFEST} was written with; "
                     "prepare the corpus again in a new folder.")
  return manifest


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(1 << 22):
      digest.update(block)
  return digest.hexdigest()


def verify_shard(root: pathlib.Path, shard: dict, vocab_size: int):
  """Checks one shard's content, not only its shape: each file's sha256 against the manifest's
  (folders prepared before checksums existed skip this), every token id inside the vocabulary and
  the example index rising from 0 to the token count. A ValueError names the damaged file."""
  tokens, index, _ = _open_shard(root, shard)
  for part, expected in shard.get("sha256", {}).items():
    path = shard_file(root, shard["name"], part)
    if file_sha256(path) != expected:
      raise ValueError(f"Shard file {path} is damaged (its sha256 differs from {MANIFEST}'s); "
                       "prepare the corpus again in a new folder.")
  path = shard_file(root, shard["name"], "tokens")
  if len(tokens) and int(np.max(tokens)) >= vocab_size:
    raise ValueError(f"Shard file {path} holds token id {int(np.max(tokens))}, outside the "
                     f"vocabulary of {vocab_size}: damaged or from another tokenizer; prepare the "
                     "corpus again in a new folder.")
  if index[0] != 0 or index[-1] != len(tokens) or np.any(np.diff(index) <= 0):
    raise ValueError(f"Shard file {shard_file(root, shard['name'], 'index')} is damaged (its "
                     "example offsets do not rise from 0 to the token count); prepare the corpus "
                     "again in a new folder.")


_CHECKED = set()  # (file, size, mtime) of the shards this process checked: each is hashed once


def _verify_once(root: pathlib.Path, shard: dict, vocab_size: int):
  """`verify_shard`, skipped for a shard whose files this process already checked unchanged (one
  run opens a split several times: its rows, its texts)."""
  key = tuple((str(path), stat.st_size, stat.st_mtime_ns) for path in
              (shard_file(root, shard["name"], part) for part in PARTS)
              for stat in (path.stat(),))
  if key not in _CHECKED:
    verify_shard(root, shard, vocab_size)
    _CHECKED.add(key)


def verify_folder(folder: str) -> dict:
  """Every shard of a prepared folder checked (`verify_shard`); its counts when all are whole."""
  manifest = read_manifest(folder)
  root = local_folder(folder)
  vocab_size = manifest["settings"]["vocab_size"]
  for split in manifest["splits"].values():
    for shard in split["shards"]:
      verify_shard(root, shard, vocab_size)
  return {"folder": str(root), "checksums": all("sha256" in shard for split in
                                                 manifest["splits"].values()
                                                 for shard in split["shards"]),
          **{name: {"shards": len(split["shards"]), "tokens": split["tokens"]}
             for name, split in manifest["splits"].items()}}


def _open_shard(root: pathlib.Path, shard: dict) -> tuple[np.ndarray, ...]:
  expected = {"tokens": shard["tokens"], "index": shard["examples"] + 1,
              "windows": shard["windows"]}
  arrays = []
  for part in PARTS:
    path = shard_file(root, shard["name"], part)
    if not path.is_file():
      raise ValueError(f"Shard file {path} is missing; its folder must be prepared again "
                       f"(`cdm-prepare` into a new folder).")
    try:
      array = np.load(path, mmap_mode="r")
    except ValueError as err:  # a truncated header or data
      raise ValueError(f"Shard file {path} is truncated or damaged ({err}); prepare the corpus "
                       "again in a new folder.") from None
    if array.shape != (expected[part],):
      raise ValueError(f"Shard file {path} holds {array.shape[0]} entries, {MANIFEST} says "
                       f"{expected[part]}: truncated or from another run; prepare the corpus again "
                       "in a new folder.")
    arrays.append(array)
  return tuple(arrays)


class PreparedSplit:
  """One split of a prepared folder as rows of `seq_len` tokens: one example per row (BOS ... EOS,
  then PAD), or packed windows (`packing`, as `packing.pack` makes them, within each shard)."""

  def __init__(self, folder: str, manifest: dict, split: str, packing: bool = False):
    root = local_folder(folder)
    self.seq_len = manifest["settings"]["seq_len"]
    self.packing = packing
    self._root, self._vocab_size = root, manifest["settings"]["vocab_size"]
    self._entries = manifest["splits"][split]["shards"]
    self._shards = [_open_shard(root, shard) for shard in self._entries]
    self._verified = set()  # shards whose content was checked (on first read, `verify_shard`)
    counts = [len(windows) if packing else len(index) - 1
              for _, index, windows in self._shards]
    self._ends = np.cumsum(counts, dtype=np.int64)

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self), self.seq_len)

  def __getitem__(self, rows) -> np.ndarray:
    if isinstance(rows, slice):
      rows = np.arange(len(self))[rows]
    rows = np.asarray(rows, np.int64)
    if rows.ndim != 1:
      raise IndexError("PreparedSplit takes a slice or a 1-D array of row numbers.")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
      raise IndexError(f"Rows outside 0..{len(self) - 1}.")
    out = np.full((len(rows), self.seq_len), PAD_ID, np.int32)
    shard_of = np.searchsorted(self._ends, rows, side="right")
    for shard in set(shard_of.tolist()) - self._verified:
      _verify_once(self._root, self._entries[shard], self._vocab_size)
      self._verified.add(shard)
    for row, (number, shard) in enumerate(zip(rows, shard_of)):
      tokens, index, windows = self._shards[shard]
      local = number - (self._ends[shard - 1] if shard else 0)
      if self.packing:
        begin = int(index[windows[local]])
        end = min(begin + self.seq_len, len(tokens))
      else:
        begin, end = int(index[local]), int(index[local + 1])
      out[row, :end - begin] = tokens[begin:end]
    return out


class WindowedOrder:
  """An epoch's order of N rows without an N-long permutation: rows are cut into blocks of
  `block` consecutive rows, the blocks are permuted, and each run of `window // block` permuted
  blocks is shuffled as one. Memory is O(N / block + window); epoch e and (seed, e, window number)
  fix every draw, so (epoch, position) is the whole iterator state. With N <= window it is one
  full permutation."""

  def __init__(self, size: int, seed: int, window: int = 1 << 18, block: int = 4096):
    self.size, self.seed = size, seed
    self.block = max(1, min(block, window))
    self.blocks_per_window = max(1, window // self.block)
    self._epoch, self._cached = None, (None, None)

  def _layout(self, epoch: int):
    if self._epoch != epoch:
      num_blocks = -(-self.size // self.block)
      blocks = np.random.default_rng([self.seed, epoch]).permutation(num_blocks)
      sizes = np.minimum(self.block, self.size - blocks * self.block)
      groups = np.arange(num_blocks) // self.blocks_per_window
      self._blocks, self._groups = blocks, groups
      self._group_ends = np.cumsum(np.bincount(groups, weights=sizes).astype(np.int64))
      self._epoch, self._cached = epoch, (None, None)

  def _group_rows(self, epoch: int, group: int) -> np.ndarray:
    if self._cached[0] != group:
      rows = np.concatenate([np.arange(b * self.block, min((b + 1) * self.block, self.size))
                             for b in self._blocks[self._groups == group]])
      rng = np.random.default_rng([self.seed, epoch, group + 1])
      self._cached = (group, rows[rng.permutation(len(rows))])
    return self._cached[1]

  def rows(self, epoch: int, start: int, count: int) -> np.ndarray:
    """Rows at positions start .. start + count - 1 of epoch `epoch`'s order (fewer at its end)."""
    self._layout(epoch)
    out = []
    position, end = start, min(start + count, self.size)
    while position < end:
      group = int(np.searchsorted(self._group_ends, position, side="right"))
      first = int(self._group_ends[group - 1]) if group else 0
      take = min(end, int(self._group_ends[group])) - position
      out.append(self._group_rows(epoch, group)[position - first:position - first + take])
      position += take
    return np.concatenate(out) if out else np.zeros((0,), np.int64)
