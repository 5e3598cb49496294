"""Corpus readers, chosen by name: the built-in WordNet corpus, plain text, JSONL, HF datasets.

Each reader returns a list of non-empty examples: strings for language modelling, (source, target)
pairs for seq2seq corpora (JSONL with `data.source_field` and `data.target_field`, or the built-in
WordNet tasks). Bad input fails loudly: a missing file or an empty corpus raises with the fix,
undecodable bytes raise with the file and line.
"""

import codecs
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

from cdm_jax.runtime import errors, fs
from cdm_jax.runtime import registry

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_CACHE = pathlib.Path(os.path.expanduser("~/.cache/cdm_jax/wordnet"))
WORDNET_HELP = (
    "WordNet 3.0 (Debian's wordnet-base) was not found in $WORDNET_DIR, /usr/share/wordnet or {cache}. "
    "Get it with `sudo apt-get install wordnet-base`, or without root: "
    "`python -m cdm_jax.data.corpora --fetch_wordnet` (runs `apt-get download wordnet-base` and "
    "`dpkg -x` into {cache}), or set WORDNET_DIR to a folder holding data.noun etc.")

READERS = registry.Registry("corpus")
register = READERS.register


Example = str | tuple[str, str]  # a text, or a (source, target) pair


def read_corpus(name: str, path: str = "", field: str = "text", hf_split: str = "train",
                max_examples: int = 0, *, pair_fields: tuple[str, str] | None = None) -> list[Example]:
  """Reads corpus `name` (see `READERS.names()`) into a list of examples; whitespace is collapsed
  and empty examples (pairs with an empty side) dropped. `pair_fields`: (source, target) field
  names, which make a JSONL corpus a seq2seq one."""
  if pair_fields is not None:
    if name != "jsonl":
      raise ValueError(f"data.source_field/target_field need data.corpus='jsonl', got {name!r}.")
    examples = read_jsonl_pairs(path, *pair_fields)
  else:
    examples = READERS.get(name)(path=path, field=field, hf_split=hf_split)
  examples = [e for e in map(_normalize, examples) if e]
  if max_examples:
    examples = examples[:max_examples]
  if not examples:
    raise ValueError(f"Corpus {name!r} ({path or 'built-in'}) holds no non-empty examples.")
  return examples


def iter_corpus(name: str, path: str = "", field: str = "text", hf_split: str = "train",
                max_examples: int = 0):
  """The examples of `read_corpus`, one at a time and normalized the same way, without holding the
  corpus: text and JSONL files are read line by line, `hf` in streaming mode; the built-in corpora
  are small and come from their readers. For one-pass preparation (`cdm_jax.data.prepare`)."""
  if name in ("text", "jsonl"):
    lines = _iter_lines(path)
    if name == "jsonl":
      lines = (values[0] for _, values in _json_values(lines, path, (field,), "data.field"))
    raw = lines
  elif name == "hf":
    raw = (row[field] for row in _hf_dataset(path, hf_split, streaming=True))
  else:
    raw = READERS.get(name)(path=path, field=field, hf_split=hf_split)
  count = 0
  for example in map(_normalize, raw):
    if example:
      yield example
      count += 1
      if count == max_examples:
        return
  if not count:
    raise ValueError(f"Corpus {name!r} ({path or 'built-in'}) holds no non-empty examples.")


def _normalize(example: Example) -> Example | None:
  if isinstance(example, tuple):
    pair = tuple(" ".join(x.split()) for x in example)
    return pair if all(pair) else None
  return " ".join(example.split())


def is_pair(example: Example) -> bool:
  return isinstance(example, tuple)


def _check_file(path: str):
  if not path:
    raise FileNotFoundError("No corpus file given: set data.path to a text or JSONL file.")
  file = fs.path(path)
  if file.is_dir():
    raise IsADirectoryError(f"Corpus path {str(file)!r} is a directory; set data.path to one text "
                            "or JSONL file in it.")
  if not file.is_file():
    raise FileNotFoundError(f"Corpus file {str(file)!r} does not exist (set data.path).")
  return file


def _decode_line(raw: bytes, file, number: int, offset: int) -> str:
  """One line's text; `number` and `offset` (of the line's first byte) name a bad byte."""
  nul = raw.find(b"\x00")
  if nul >= 0:
    raise ValueError(f"{file}: line {number} holds a NUL byte (byte {offset + nul}): not a text "
                     f"file, or UTF-16; re-encode it as UTF-8.")
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as err:
    raise ValueError(f"{file}: line {number} is not valid UTF-8 (byte {offset + err.start}: "
                     f"{raw[err.start:err.start + 1]!r}). Re-encode the file as UTF-8.") from None


def _read_lines(path: str) -> list[str]:
  """The file's lines: UTF-8 (a leading BOM dropped), split on \\n only (a trailing \\r removed),
  so U+2028, U+0085, \\x0b and \\x0c stay inside their line; NUL bytes and bytes that are not
  UTF-8 are refused with their line."""
  return list(_iter_lines(path))


def _iter_lines(path: str):
  """`_read_lines`, one line in memory at a time (byte offsets in errors count after a BOM)."""
  file = _check_file(path)
  offset = 0
  with file.open("rb") as f:
    for number, raw in enumerate(f, 1):
      if number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
      line = _decode_line(raw, file, number, offset)
      offset += len(raw)
      line = line[:-1] if line.endswith("\n") else line
      yield line[:-1] if line.endswith("\r") else line


@register("text")
def read_text(path: str, **unused) -> list[str]:
  """A plain text file, one example per line."""
  return _read_lines(path)


def _jsonl_records(path: str, fields: tuple[str, ...], flag: str):
  """(line number, [string of each field]) for every non-empty JSON line."""
  return _json_values(_read_lines(path), path, fields, flag)


def _json_values(lines, path: str, fields: tuple[str, ...], flag: str):
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg}).") from None
    values = []
    for field in fields:
      if not isinstance(record, dict) or field not in record:
        raise ValueError(f"{path}: line {number} has no field {field!r} (set {flag}).")
      if not isinstance(record[field], str):
        raise ValueError(f"{path}: line {number}: field {field!r} is not a string.")
      values.append(record[field])
    yield number, values


@register("jsonl")
def read_jsonl(path: str, field: str = "text", **unused) -> list[str]:
  """JSON lines; `field` names the string to use from each object."""
  return [values[0] for _, values in _jsonl_records(path, (field,), "data.field")]


def read_jsonl_pairs(path: str, source_field: str, target_field: str) -> list[tuple[str, str]]:
  """(source, target) pairs from JSON lines, e.g. {"src": "...", "tgt": "..."}."""
  return [tuple(values) for _, values in _jsonl_records(
      path, (source_field, target_field), "data.source_field / data.target_field")]


@register("hf")
def read_hf(path: str, field: str = "text", hf_split: str = "train", **unused) -> list[str]:
  """A Hugging Face dataset by name (optional extra: `pip install cdm_jax[hf]`, needs internet)."""
  return [row[field] for row in _hf_dataset(path, hf_split)]


def _hf_dataset(path: str, hf_split: str, streaming: bool = False):
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.MissingExtraError("data.corpus='hf' needs the `datasets` package: "
                                   "pip install 'cdm_jax[hf]'.") from None
  if streaming:  # rows arrive as they are read: nothing is downloaded whole
    return datasets.load_dataset(path, split=hf_split, streaming=True)
  return datasets.load_dataset(path, split=hf_split)


def find_wordnet() -> pathlib.Path | None:
  candidates = [os.environ.get("WORDNET_DIR", ""), "/usr/share/wordnet",
                str(WORDNET_CACHE / "usr/share/wordnet")]
  for folder in candidates:
    if folder and all((pathlib.Path(folder) / f).is_file() for f in WORDNET_FILES):
      return pathlib.Path(folder)
  return None


def fetch_wordnet(dest: pathlib.Path = WORDNET_CACHE) -> pathlib.Path:
  """Downloads Debian's wordnet-base package and unpacks it under `dest` (no root needed)."""
  if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
    raise RuntimeError("apt-get/dpkg not found: install WordNet 3.0 yourself and set WORDNET_DIR.")
  dest.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["apt-get", "download", "wordnet-base"], cwd=tmp, check=True)
    debs = list(pathlib.Path(tmp).glob("wordnet-base_*.deb"))
    if not debs:
      raise RuntimeError("apt-get download wordnet-base produced no .deb file.")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(dest)], check=True)
  return dest / "usr/share/wordnet"


def parse_wordnet_line(line: str) -> list[str]:
  """Definitions and quoted example sentences of one synset line (the gloss after ' | ')."""
  if line.startswith("  ") or " | " not in line:
    return []  # licence header or a line without a gloss
  gloss = line.split(" | ", 1)[1].strip()
  examples = []
  for part in gloss.split(";"):
    part = part.strip()
    if part.startswith('"'):
      part = part.strip('"').strip()
    if part:
      examples.append(part)
  return examples


def _wordnet_lines():
  """(file name, line) of every line of the four data files."""
  folder = find_wordnet()
  if folder is None:
    raise FileNotFoundError(WORDNET_HELP.format(cache=WORDNET_CACHE))
  for name in WORDNET_FILES:
    with open(folder / name, encoding="utf-8", errors="strict") as f:
      for line in f:
        yield name, line


@register("wordnet")
def read_wordnet(**unused) -> list[str]:
  """Glosses and example sentences of WordNet 3.0 (about 190k short English phrases)."""
  return [example for _, line in _wordnet_lines() for example in parse_wordnet_line(line)]


WORDNET_POS = {"data.noun": "noun", "data.verb": "verb", "data.adj": "adj", "data.adv": "adv"}


def read_wordnet_labeled() -> list[tuple[str, str]]:
  """(example, part of speech) for every example of the "wordnet" corpus: the label is the data
  file it came from (noun / verb / adj / adv), the control task of `experiments/control.py`."""
  return [(" ".join(example.split()), WORDNET_POS[name]) for name, line in _wordnet_lines()
          for example in parse_wordnet_line(line) if example.split()]


def parse_wordnet_synset(line: str) -> tuple[list[str], str] | None:
  """(lemmas, definition) of one synset line: its words (underscores as spaces, adjective
  markers like "(a)" dropped) and the first part of the gloss that is not a quoted example."""
  if line.startswith("  ") or " | " not in line:
    return None
  fields, gloss = line.split(" | ", 1)
  fields = fields.split()
  count = int(fields[3], 16)
  lemmas = [fields[4 + 2 * i].split("(")[0].replace("_", " ") for i in range(count)]
  parts = (part.strip() for part in gloss.split(";"))
  definition = next((part for part in parts if part and not part.startswith('"')), "")
  return (lemmas, definition) if definition else None


def _wordnet_synsets():
  """(lemmas, definition) of every synset with a definition."""
  for _, line in _wordnet_lines():
    synset = parse_wordnet_synset(line)
    if synset:
      yield synset


@register("wordnet_definitions")
def read_wordnet_definitions(**unused) -> list[tuple[str, str]]:
  """Definition modelling: (the synset's lemmas, comma-separated; its definition)."""
  return [(", ".join(lemmas), definition) for lemmas, definition in _wordnet_synsets()]


@register("wordnet_reverse")
def read_wordnet_reverse(**unused) -> list[tuple[str, str]]:
  """Reverse dictionary: (a definition; the synset's first lemma)."""
  return [(definition, lemmas[0]) for lemmas, definition in _wordnet_synsets()]


if __name__ == "__main__":
  import sys
  if "--fetch_wordnet" in sys.argv:
    found = find_wordnet()
    print(f"WordNet already at {found}" if found else f"WordNet unpacked to {fetch_wordnet()}")
  else:
    print("usage: python -m cdm_jax.data.corpora --fetch_wordnet")
