import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from cdm_jax.data import batching, corpora, encoding, packing, tokenizer as tokenizer_lib

WORDNET_LINE = ('00217593 04 n 01 kill 1 002 @ 00217014 n 0000 + 00355365 v 0101 | the destruction '
                'of an enemy plane or ship or tank or missile; "the pilot reported two kills during '
                'the mission"  ')


def test_parse_wordnet_line():
  assert corpora.parse_wordnet_line(WORDNET_LINE) == [
      "the destruction of an enemy plane or ship or tank or missile",
      "the pilot reported two kills during the mission"]
  assert corpora.parse_wordnet_line("  1 This software and database is being provided") == []


def test_wordnet_reader_uses_wordnet_dir(tmp_path, monkeypatch):
  for name in corpora.WORDNET_FILES:
    (tmp_path / name).write_text("  1 licence header\n" + WORDNET_LINE + "\n")
  monkeypatch.setenv("WORDNET_DIR", str(tmp_path))
  examples = corpora.read_corpus("wordnet")
  assert len(examples) == 8 and examples[1] == "the pilot reported two kills during the mission"


def test_missing_wordnet_says_how_to_get_it(monkeypatch, tmp_path):
  monkeypatch.setenv("WORDNET_DIR", str(tmp_path))
  monkeypatch.setattr(corpora, "find_wordnet", lambda: None)
  with pytest.raises(FileNotFoundError, match="apt-get download wordnet-base"):
    corpora.read_corpus("wordnet")


def test_text_and_jsonl_readers_and_their_errors(tmp_path):
  text = tmp_path / "c.txt"
  text.write_text("first  line\n\n  second line \n")
  assert corpora.read_corpus("text", str(text)) == ["first line", "second line"]
  jsonl = tmp_path / "c.jsonl"
  jsonl.write_text(json.dumps({"body": "hello world"}) + "\n" + json.dumps({"body": "bye"}) + "\n")
  assert corpora.read_corpus("jsonl", str(jsonl), field="body") == ["hello world", "bye"]
  with pytest.raises(ValueError, match="no field 'text'"):
    corpora.read_corpus("jsonl", str(jsonl))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    corpora.read_corpus("text", str(tmp_path / "missing.txt"))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n \n")
  with pytest.raises(ValueError, match="no non-empty examples"):
    corpora.read_corpus("text", str(empty))
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"fine\nbroken \xff byte\n")
  with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
    corpora.read_corpus("text", str(bad))
  with pytest.raises(ValueError, match="Unknown corpus"):
    corpora.read_corpus("nope")


@pytest.fixture(scope="module")
def tokenizer():
  words = "the a cat dog sat ran on under mat log big small red blue green tree".split()
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(words, rng.integers(2, 8))) for _ in range(500)]
  return tokenizer_lib.train_tokenizer(lines, 32)


def test_encode_layout_and_long_lines(tokenizer):
  rows, stats = encoding.encode(tokenizer, ["the cat sat", "the dog " * 20], 10)
  assert rows.shape == (2, 10) and stats.truncated == 1
  assert rows[0, 0] == tokenizer_lib.BOS_ID
  eos = int(np.where(rows[0] == tokenizer_lib.EOS_ID)[0][0])
  assert np.all(rows[0, eos + 1:] == tokenizer_lib.PAD_ID)
  assert tokenizer_lib.decode_tokens(tokenizer, rows[0]) == "the cat sat"
  assert rows[1, -1] == tokenizer_lib.EOS_ID  # a truncated line still ends with EOS
  rows, stats = encoding.encode(tokenizer, ["the cat sat", "the dog " * 20], 10, "drop")
  assert rows.shape == (1, 10) and stats.dropped == 1
  with pytest.raises(ValueError, match="example 1 has"):
    encoding.encode(tokenizer, ["the cat sat", "the dog " * 20], 10, "error")


def test_split_long_lines_keep_every_piece_in_framed_rows(tokenizer):
  long = "the dog " * 20
  rows, stats = encoding.encode(tokenizer, ["the cat sat", long], 10, "split")
  pieces = tokenizer.encode(long)
  assert stats.split == 1 and stats.truncated == 0 and len(rows) == 1 + -(-len(pieces) // 8)
  assert (rows[:, 0] == tokenizer_lib.BOS_ID).all()
  body = []
  for row in rows[1:]:
    end = int(np.where(row == tokenizer_lib.EOS_ID)[0][0])
    assert (row[end + 1:] == tokenizer_lib.PAD_ID).all() and 0 < end <= 9
    body += row[1:end].tolist()
  assert body == pieces  # consecutive chunks, nothing lost or repeated
  with pytest.raises(ValueError, match="split is for plain-text"):
    encoding.encode(tokenizer, [("the cat", "sat on the mat")], 10, "split")
  with pytest.raises(ValueError, match="must be one of"):
    encoding.encode(tokenizer, ["the cat"], 10, "wrap")


def test_vocab_too_large_or_too_small_is_a_clear_error():
  with pytest.raises(ValueError, match="too large for this corpus"):
    tokenizer_lib.train_tokenizer(["a b c", "b c d"], 500)
  many_characters = ["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOP"] * 50
  with pytest.raises(ValueError, match="vocab_size=12 is too small .*12 vs 47.*Raise"):
    tokenizer_lib.train_tokenizer(many_characters, 12)


def test_split_is_deterministic_and_per_example():
  examples = [f"example number {i}" for i in range(2000)]
  train, valid = encoding.split_examples(examples, 10.0)
  assert 100 < len(valid) < 300 and len(train) + len(valid) == 2000
  train2, valid2 = encoding.split_examples(examples[::-1] + ["a new one"], 10.0)
  assert set(valid) <= set(valid2)


def test_batch_iterator_resumes_and_shards_by_process():
  tokens = np.arange(50)[:, None].repeat(3, axis=1)
  it = batching.BatchIterator(tokens, 8, seed=1)
  first = [next(it) for _ in range(9)]  # crosses an epoch boundary (6 batches per epoch)
  state = it.get_state()
  after = [next(it) for _ in range(3)]
  resumed = batching.BatchIterator(tokens, 8, seed=1)
  resumed.set_state(state)
  for a, b in zip(after, [next(resumed) for _ in range(3)]):
    np.testing.assert_array_equal(a, b)
  assert len(np.unique(np.concatenate(first[:6])[:, 0])) == 48  # no repeats within an epoch
  halves = [batching.BatchIterator(tokens, 8, seed=1, process_index=p, process_count=2) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([next(h) for h in halves]), first[0])


def test_text_corpus_with_bom_crlf_and_unicode_separators(tmp_path):
  """Only \n (with an optional \r before it) ends an example; a BOM is not part of the first one;
  U+2028, U+0085, \x0b and \x0c are whitespace inside their example (collapsed to one space)."""
  path = tmp_path / "c.txt"
  path.write_bytes("\ufeffalpha beta\r\ngamma\u2028delta\r\nepsilon\x85zeta\x0beta\x0ctheta\n"
                   "last line".encode("utf-8"))
  assert corpora.read_corpus("text", str(path)) == [
      "alpha beta", "gamma delta", "epsilon zeta eta theta", "last line"]


def test_jsonl_corpus_with_bom_and_a_line_separator_in_a_record(tmp_path):
  path = tmp_path / "c.jsonl"
  records = [{"text": "first record"}, {"text": "two\u2028halves stay one"}, {"text": "third"}]
  lines = [json.dumps(r, ensure_ascii=False) for r in records]
  path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
  assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, not as an escape
  assert corpora.read_corpus("jsonl", str(path)) == ["first record", "two halves stay one", "third"]


@pytest.mark.parametrize("corpus,content", [("text", b"fine\nalso fine\nbro\x00ken\n"),
                                            ("jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\x00"}\n')])
def test_nul_bytes_are_refused_with_the_line(tmp_path, corpus, content):
  path = tmp_path / "c.bin"
  path.write_bytes(content)
  with pytest.raises(ValueError, match="line 3 holds a NUL byte"):
    corpora.read_corpus(corpus, str(path))


def test_missing_path_says_to_set_it():
  with pytest.raises(FileNotFoundError, match="set data.path"):
    corpora.read_corpus("text", "")


def test_max_examples_keeps_the_first_non_empty_ones(tmp_path):
  path = tmp_path / "c.txt"
  path.write_text("one\n\n  \ntwo\nthree\nfour\n")
  assert corpora.read_corpus("text", str(path), max_examples=3) == ["one", "two", "three"]
  assert corpora.read_corpus("text", str(path), max_examples=0) == ["one", "two", "three", "four"]


def test_split_that_leaves_no_training_examples_is_an_error():
  with pytest.raises(ValueError, match="leaves no training examples"):
    encoding.split_examples(["a", "b", "c"], 100.0)


ADJ_LINE = ('00001740 00 a 02 able 0 able(p) 1 005 | (usually followed by `to\') having the necessary '
            'means or skill; "able to swim"; "she was able to program her computer"  ')


def test_wordnet_seq2seq_tasks_read_lemmas_and_definitions(tmp_path, monkeypatch):
  assert corpora.parse_wordnet_synset(WORDNET_LINE) == (
      ["kill"], "the destruction of an enemy plane or ship or tank or missile")
  lemmas, definition = corpora.parse_wordnet_synset(ADJ_LINE)
  assert lemmas == ["able", "able"] and definition.startswith("(usually followed by")
  assert corpora.parse_wordnet_synset("  1 licence header") is None
  for name in corpora.WORDNET_FILES:
    (tmp_path / name).write_text("  1 licence header\n" + WORDNET_LINE + "\n" + ADJ_LINE + "\n")
  monkeypatch.setenv("WORDNET_DIR", str(tmp_path))
  definitions = corpora.read_corpus("wordnet_definitions")
  assert definitions[0] == ("kill", "the destruction of an enemy plane or ship or tank or missile")
  assert definitions[1][0] == "able, able" and len(definitions) == 8
  assert corpora.read_corpus("wordnet_reverse")[0] == (definitions[0][1], "kill")


def test_jsonl_pairs_encode_source_eos_target(tmp_path, tokenizer):
  path = tmp_path / "pairs.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in [
      {"src": "the cat", "tgt": "sat on  the mat"}, {"src": "a dog", "tgt": " "},
      {"src": "red", "tgt": "big tree"}]) + "\n")
  pairs = corpora.read_corpus("jsonl", str(path), pair_fields=("src", "tgt"))
  assert pairs == [("the cat", "sat on the mat"), ("red", "big tree")]  # empty target dropped
  with pytest.raises(ValueError, match="no field 'target'"):
    corpora.read_corpus("jsonl", str(path), pair_fields=("src", "target"))
  with pytest.raises(ValueError, match="need data.corpus='jsonl'"):
    corpora.read_corpus("text", str(path), pair_fields=("src", "tgt"))
  rows, _ = encoding.encode(tokenizer, pairs, 16)
  src, tgt = tokenizer.encode("the cat"), tokenizer.encode("sat on the mat")
  np.testing.assert_array_equal(rows[0, :len(src) + len(tgt) + 3],
                                [tokenizer_lib.BOS_ID, *src, tokenizer_lib.EOS_ID, *tgt,
                                 tokenizer_lib.EOS_ID])
  assert encoding.texts_of(pairs) == ["the cat", "sat on the mat", "red", "big tree"]
  train, valid = encoding.split_examples([(f"source {i}", "t") for i in range(400)] +
                                         [(f"source {i}", "other") for i in range(400)], 10.0)
  assert not {s for s, _ in train} & {s for s, _ in valid}  # a source sits on one side only


def _segments(window):
  """Complete BOS ... EOS segments of a packed window, and the cut-off head at its end."""
  segments, current = [], []
  for token in window.tolist():
    if token == tokenizer_lib.PAD_ID:
      break
    current.append(token)
    if token == tokenizer_lib.EOS_ID:
      segments.append(current)
      current = []
  return segments, current


def test_packing_keeps_every_example_whole_once_and_in_order():
  rng = np.random.default_rng(0)
  seq_len, examples = 10, []
  for _ in range(200):
    body = rng.integers(4, 50, size=rng.integers(1, seq_len - 1)).tolist()
    examples.append([tokenizer_lib.BOS_ID, *body, tokenizer_lib.EOS_ID])
  rows = np.full((len(examples), seq_len), tokenizer_lib.PAD_ID, np.int32)
  for row, example in zip(rows, examples):
    row[:len(example)] = example
  packed = packing.pack(rows)
  assert packed.shape[1] == seq_len and len(packed) < len(rows)
  assert np.all(packed[:, 0] == tokenizer_lib.BOS_ID)  # windows start at an example
  assert np.all(packed[:-1] != tokenizer_lib.PAD_ID)  # only the last window may hold PAD
  whole = []
  for index, window in enumerate(packed):
    segments, head = _segments(window)
    whole.extend(segments)
    if head:  # a cut example: its head ends this window, and it starts the next one whole
      next_first = _segments(packed[index + 1])[0][0]
      assert next_first[:len(head)] == head and len(next_first) > len(head)
  assert whole == examples


FUZZ = hypothesis.settings(max_examples=120, deadline=None, derandomize=True,
                           suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


@FUZZ
@hypothesis.given(lines=st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\x00")),
                                 max_size=12),
                  crlf=st.booleans(), bom=st.booleans(), final_newline=st.booleans())
def test_fuzzed_text_corpus_reads_every_line_collapsed(tmp_path, lines, crlf, bom, final_newline):
  """Any Unicode lines (control characters, separators, CR, very long runs; BOM and CRLF or not):
  the examples are exactly the non-blank lines with whitespace collapsed, or the one clear error of
  a corpus without any."""
  path = tmp_path / "fuzz.txt"
  body = ("\r\n" if crlf else "\n").join(lines) + ("\n" if final_newline and lines else "")
  path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"))
  expected = [" ".join(line.split()) for line in lines if line.split()]
  if not expected:
    with pytest.raises(ValueError, match="holds no non-empty examples"):
      corpora.read_corpus("text", str(path))
  else:
    assert corpora.read_corpus("text", str(path)) == expected


@FUZZ
@hypothesis.given(raw=st.binary(max_size=300), kind=st.sampled_from(["text", "jsonl"]))
def test_fuzzed_bytes_are_read_or_refused_with_a_message(tmp_path, raw, kind):
  """Arbitrary bytes (invalid UTF-8, NUL, broken JSON): clean examples or a ValueError that names
  the file; never another exception."""
  path = tmp_path / "fuzz.bin"
  path.write_bytes(raw)
  try:
    examples = corpora.read_corpus(kind, str(path))
  except ValueError as err:
    assert str(path) in str(err) or "holds no non-empty examples" in str(err)
  else:
    assert examples and all(e and e == " ".join(e.split()) and "\x00" not in e for e in examples)


def test_a_directory_as_corpus_path_is_refused_by_name(tmp_path):
  with pytest.raises(IsADirectoryError, match="is a directory; set data.path to one"):
    corpora.read_corpus("text", str(tmp_path))


def test_the_hf_reader_reads_one_field_of_a_split_and_names_its_extra(monkeypatch):
  """A fake `datasets` module: nothing is downloaded."""
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from cdm_jax.runtime import errors  # pylint: disable=g-import-not-at-top
  calls = []
  fake = types.ModuleType("datasets")

  def load_dataset(path, split, streaming=False):
    calls.append((path, split, streaming))
    return iter([{"body": " a  b ", "id": 1}, {"body": "", "id": 2}, {"body": "c", "id": 3}])
  fake.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, "datasets", fake)
  assert corpora.read_corpus("hf", "ag_news", "body", "test") == ["a b", "c"]
  assert list(corpora.iter_corpus("hf", "ag_news", "body", "test")) == ["a b", "c"]
  assert calls == [("ag_news", "test", False), ("ag_news", "test", True)]
  monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: the import fails
  with pytest.raises(errors.MissingExtraError, match=r"pip install 'cdm_jax\[hf\]'"):
    corpora.read_corpus("hf", "ag_news")


def test_a_bpe_tokenizer_round_trips_and_vocabulary_sizes_are_checked():
  lines = ["the cat sat on the mat", "a dog ran under the log", "the bird sat in the tree"] * 20
  bpe = tokenizer_lib.train_tokenizer(lines, 40, model_type="bpe")
  assert bpe.get_piece_size() == 40
  ids = bpe.encode("the cat ran")
  assert tokenizer_lib.decode_tokens(bpe, [tokenizer_lib.BOS_ID, *ids, tokenizer_lib.EOS_ID, 0]) \
      == "the cat ran"
  for size in (0, 3, 4, -1):
    with pytest.raises(ValueError, match="data.vocab_size must be an integer above 4"):
      tokenizer_lib.train_tokenizer(lines, size)
  with pytest.raises(ValueError, match="too small for this corpus"):
    tokenizer_lib.train_tokenizer(lines, 6)
