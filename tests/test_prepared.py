"""Prepared corpora (`cdm-prepare`): shards written once and streamed, the windowed shuffle's epoch
and process arithmetic, resumption, refusals of damaged folders, and training from a folder."""

import json
import pathlib

import numpy as np
import pytest

import cdm_jax
from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID
from cdm_jax.data import batching, corpora, encoding, packing, pipeline, prepare, shards
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.training import train

from conftest import WORDS, tiny_config, write_word_lines
from cdm_jax.runtime import config_files


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
  """1,500 lines of 1-14 words: some longer than seq_len 16 holds."""
  return write_word_lines(tmp_path_factory.mktemp("long") / "corpus.txt", 1500, (1, 15), seed=3)


def _prepared(corpus_path, folder, **kwargs):
  config = tiny_config(corpus_path)
  kwargs.setdefault("shard_tokens", 600)  # several shards per split
  return config, prepare.prepare(config.data, str(folder), **kwargs)


def test_prepared_rows_are_the_in_memory_rows_in_shards(long_corpus, tmp_path):
  config, manifest = _prepared(long_corpus, tmp_path / "p")
  assert len(manifest["splits"]["train"]["shards"]) > 3 and manifest["truncated"] > 0
  tokenizer = tokenizer_lib.load_tokenizer(str(tmp_path / "p"))
  train_text, valid_text = encoding.split_examples(corpora.read_corpus("text", str(long_corpus)),
                                                   config.data.valid_percent)
  for split, texts in (("train", train_text), ("valid", valid_text)):
    rows, _ = encoding.encode(tokenizer, texts, config.data.seq_len)
    prepared = shards.PreparedSplit(str(tmp_path / "p"), manifest, split)
    assert prepared.shape == rows.shape
    np.testing.assert_array_equal(prepared[:], rows)
    np.testing.assert_array_equal(prepared[np.array([5, 0, len(rows) - 1])], rows[[5, 0, -1]])
  # Packed windows, shard by shard, are `packing.pack`'s windows of that shard's examples.
  _, one_shard = _prepared(long_corpus, tmp_path / "one", shard_tokens=1 << 20)
  rows, _ = encoding.encode(tokenizer, train_text, config.data.seq_len)
  packed = shards.PreparedSplit(str(tmp_path / "one"), one_shard, "train", packing=True)
  np.testing.assert_array_equal(packed[:], packing.pack(rows))
  # Long lines split into several rows: the same rows as the in-memory path's.
  config.data.long_lines = "split"
  split = prepare.prepare(config.data, str(tmp_path / "split"), shard_tokens=600)
  assert split["split"] == manifest["truncated"] > 0 and split["truncated"] == 0
  rows, _ = encoding.encode(tokenizer_lib.load_tokenizer(str(tmp_path / "split")), train_text,
                            config.data.seq_len, "split")
  np.testing.assert_array_equal(shards.PreparedSplit(str(tmp_path / "split"), split, "train")[:],
                                rows)


def test_packing_never_splits_an_example_wrongly_across_an_eos(long_corpus, tmp_path):
  _, manifest = _prepared(long_corpus, tmp_path / "p")
  examples = shards.PreparedSplit(str(tmp_path / "p"), manifest, "train")[:]
  whole = {tuple(r[r != PAD_ID]) for r in examples}
  windows = shards.PreparedSplit(str(tmp_path / "p"), manifest, "train", packing=True)[:]
  assert len(windows) < len(examples) and (windows[:, 0] == BOS_ID).all()
  for window in windows:
    tokens = list(window[window != PAD_ID])
    while EOS_ID in tokens:  # every EOS closes a whole example, which starts at a BOS
      end = tokens.index(EOS_ID) + 1
      assert tuple(tokens[:end]) in whole
      tokens = tokens[end:]
    assert not tokens or (tokens[0] == BOS_ID and any(e[:len(tokens)] == tuple(tokens)
                                                     for e in whole))


@pytest.mark.parametrize("processes", [2, 4])
def test_the_processes_shares_are_one_epoch_without_overlap(processes):
  size, batch = 1000, 40  # 25 batches an epoch; 12 windows of blocks of 16 (a short last block)
  epochs = []
  for epoch in range(2):
    seen = []
    for index in range(processes):
      it = batching.BatchIterator(np.zeros((size, 1)), batch, seed=7, process_index=index,
                                  process_count=processes, shuffle_window=96)
      it.set_state({"epoch": epoch, "index": 0})
      it._windowed.block = 16  # pylint: disable=protected-access
      it._windowed.blocks_per_window = 6  # pylint: disable=protected-access
      shares = [it.next_rows() for _ in range(size // batch)]
      assert all(len(share) == batch // processes for share in shares)
      seen.extend(np.concatenate(shares))
    assert sorted(seen) == list(range(size))
    epochs.append(seen)
  assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])


def test_windowed_order_is_a_permutation_with_bounded_memory():
  order = shards.WindowedOrder(10_007, seed=1, window=1024, block=128)
  rows = order.rows(0, 0, 10_007)
  assert sorted(rows) == list(range(10_007))
  np.testing.assert_array_equal(np.concatenate([order.rows(0, s, 1000) for s in range(0, 10_007,
                                                                                      1000)]), rows)
  assert not (rows[:1024] < 1024).all()  # the first window mixes blocks from all over
  assert np.mean(np.diff(rows[:128]) == 1) < 0.1  # and shuffles inside it
  small = shards.WindowedOrder(100, seed=1)  # one window: a full permutation
  assert sorted(small.rows(0, 0, 100)) == list(range(100))


def test_a_resumed_iterator_continues_with_the_exact_next_batch(long_corpus, tmp_path):
  _, manifest = _prepared(long_corpus, tmp_path / "p")
  split = shards.PreparedSplit(str(tmp_path / "p"), manifest, "train", packing=True)
  straight = batching.BatchIterator(split, 32, seed=0, shuffle_window=128)
  expected = [next(straight) for _ in range(40)]  # past an epoch boundary
  first = batching.BatchIterator(split, 32, seed=0, shuffle_window=128)
  got = [next(first) for _ in range(17)]
  resumed = batching.BatchIterator(split, 32, seed=0, shuffle_window=128)
  resumed.set_state(json.loads(json.dumps(first.get_state())))
  got += [next(resumed) for _ in range(23)]
  np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def test_a_prepared_folder_is_prepared_once_and_a_rerun_reads_nothing(long_corpus, tmp_path,
                                                                     monkeypatch):
  config, manifest = _prepared(long_corpus, tmp_path / "p")
  monkeypatch.setattr(corpora, "iter_corpus", lambda *a, **k: pytest.fail("corpus read again"))
  assert prepare.prepare(config.data, str(tmp_path / "p"), shard_tokens=600) == manifest
  config.data.vocab_size = 40
  with pytest.raises(ValueError, match=r"other settings \(differing: vocab_size\)"):
    prepare.prepare(config.data, str(tmp_path / "p"), shard_tokens=600)


def test_an_interrupted_preparation_leaves_no_manifest_and_a_rerun_restarts(long_corpus, tmp_path,
                                                                           monkeypatch):
  config = tiny_config(long_corpus)
  real = corpora.iter_corpus
  calls = []

  def failing(*args, **kwargs):  # the second pass dies after 1,000 examples
    calls.append(1)
    for number, example in enumerate(real(*args, **kwargs)):
      if len(calls) == 2 and number == 1000:
        raise KeyboardInterrupt
      yield example
  monkeypatch.setattr(corpora, "iter_corpus", failing)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(config.data, str(tmp_path / "p"), shard_tokens=600, batch_examples=100)
  assert list((tmp_path / "p").glob("train-*.npy")) and not (tmp_path / "p/manifest.json").exists()
  with pytest.raises(ValueError, match="is not a prepared corpus"):
    shards.read_manifest(str(tmp_path / "p"))
  monkeypatch.setattr(corpora, "iter_corpus", real)
  (tmp_path / "p/train-00099.tokens.npy").write_bytes(b"stale")
  manifest = prepare.prepare(config.data, str(tmp_path / "p"), shard_tokens=600)
  _, fresh = _prepared(long_corpus, tmp_path / "fresh")
  assert manifest == fresh
  assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
      p.name for p in (tmp_path / "fresh").iterdir())


def test_damaged_folders_give_one_line_errors_and_lose_nothing(long_corpus, tmp_path):
  _, manifest = _prepared(long_corpus, tmp_path / "p")
  folder = tmp_path / "p"
  files = sorted(p.name for p in folder.iterdir())
  tokens = folder / "train-00001.tokens.npy"
  data = tokens.read_bytes()
  for damage, match in ((lambda: tokens.write_bytes(data[:-10]), "truncated"),
                        (lambda: tokens.write_bytes(data[:50]), "truncated or damaged"),
                        (lambda: np.save(tokens, np.zeros(5, np.uint16)), "holds 5 entries"),
                        (lambda: tokens.rename(folder / "moved"), "is missing")):
    damage()
    with pytest.raises(ValueError, match=match) as err:
      shards.PreparedSplit(str(folder), shards.read_manifest(str(folder)), "train")
    assert "\n" not in str(err.value)
    if (folder / "moved").exists():
      (folder / "moved").rename(tokens)
    tokens.write_bytes(data)
  assert sorted(p.name for p in folder.iterdir()) == files
  config = tiny_config(long_corpus)
  config.data.update(prepared=str(folder), seq_len=24)
  with pytest.raises(ValueError, match=r"data.seq_len=24, but .* was prepared with seq_len=16"):
    pipeline.prepare_data(config.data, str(tmp_path / "w"))
  (folder / "tokenizer.model").write_bytes(b"other")
  with pytest.raises(ValueError, match="is not the tokenizer"):
    shards.read_manifest(str(folder))


def test_a_changed_byte_or_an_id_outside_the_vocabulary_is_refused_on_first_read(long_corpus,
                                                                                 tmp_path):
  """Content damage of the same size: the manifest's per-file sha256 catches a changed byte when a
  shard is first read (and `verify_folder` at once); ids outside the vocabulary are refused even
  where the checksum was rewritten to match; a whole folder verifies."""
  _, manifest = _prepared(long_corpus, tmp_path / "p")
  folder = tmp_path / "p"
  assert shards.verify_folder(str(folder))["checksums"]
  tokens = folder / "train-00001.tokens.npy"
  data = bytearray(tokens.read_bytes())
  data[-3] ^= 0x01  # one byte of one token
  tokens.write_bytes(bytes(data))
  split = shards.PreparedSplit(str(folder), shards.read_manifest(str(folder)), "train")
  split[np.arange(3)]  # rows of the first shard: whole
  first_of_damaged = manifest["splits"]["train"]["shards"][0]["examples"]
  for check in (lambda: split[np.asarray([first_of_damaged])],
                lambda: shards.verify_folder(str(folder))):
    with pytest.raises(ValueError, match=r"train-00001.tokens.npy is damaged") as err:
      check()
    assert "\n" not in str(err.value)
  values = np.load(tokens).copy()
  values[0] = 9999  # beyond the tiny vocabulary, with a matching checksum in the manifest
  np.save(tokens, values)
  manifest["splits"]["train"]["shards"][1]["sha256"]["tokens"] = shards.file_sha256(tokens)
  (folder / shards.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="holds token id 9999, outside the vocabulary"):
    shards.verify_folder(str(folder))


def test_long_documents_train_a_tokenizer_and_prepare(tmp_path):
  """20 lines of 3,000 words, beyond SentencePiece's sentence limit: the tokenizer trains on
  windows of them, and the folder prepares (split into rows, and truncated)."""
  rng = np.random.default_rng(0)
  path = tmp_path / "long.txt"
  path.write_text("\n".join(" ".join(rng.choice(WORDS, 3000)) for _ in range(20)))
  for long_lines in ("split", "truncate"):
    config = tiny_config(path)
    config.data.update(long_lines=long_lines, valid_percent=10.0)
    manifest = prepare.prepare(config.data, str(tmp_path / long_lines), shard_tokens=4096)
    assert manifest["read"] == 20 and manifest[{"split": "split", "truncate": "truncated"}[
        long_lines]] == 20
    assert shards.verify_folder(str(tmp_path / long_lines))["train"]["tokens"] > 0


def test_the_tokenizer_reads_at_most_its_sample(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  path = tmp_path / "big.txt"
  path.write_text("\n".join(" ".join(rng.choice(WORDS, 6)) for _ in range(20_000)))
  real, pulled = corpora.iter_corpus, []

  def counted(*args, **kwargs):
    pulled.append(0)
    for example in real(*args, **kwargs):
      pulled[-1] += 1
      yield example
  trained_on = []
  real_train = tokenizer_lib.train_tokenizer

  def train_tokenizer(examples, *args, **kwargs):
    trained_on.append((len(examples), pulled[-1]))
    return real_train(examples, *args, **kwargs)
  monkeypatch.setattr(corpora, "iter_corpus", counted)
  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", train_tokenizer)
  config = tiny_config(path)
  manifest = prepare.prepare(config.data, str(tmp_path / "p"), tokenizer_sample=500)
  (sampled, read), = trained_on
  assert sampled == 500 and read < 600  # 500 training lines and the held-out ones among them
  assert pulled[-1] == manifest["read"] == 20_000


@pytest.mark.slow
def test_training_from_a_prepared_folder_resumes_bit_identically(long_corpus, tmp_path):
  _, manifest = _prepared(long_corpus, tmp_path / "p")

  def config(**train):
    c = tiny_config(long_corpus, num_train_steps=8, checkpoint_every_steps=4, eval_every_steps=0,
                    sample_every_steps=0, **train)
    c.data.update(prepared=str(tmp_path / "p"), shuffle_window=256, packing=True)
    return c
  train.train_and_evaluate(config(), str(tmp_path / "straight"))
  train.train_and_evaluate(config(stop_at_step=4), str(tmp_path / "split"))
  train.train_and_evaluate(config(), str(tmp_path / "split"))
  straight, split = (cdm_jax.load(str(tmp_path / d)) for d in ("straight", "split"))
  for a, b in zip(*(jax_leaves(g.params) for g in (straight, split))):
    np.testing.assert_array_equal(a, b)
  assert straight.sample(2, seed=0, num_steps=3) == split.sample(2, seed=0, num_steps=3)
  assert manifest["splits"]["train"]["examples"] > 1000


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_pod_config_streams_the_folder_the_launcher_mounts(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  config = config_files.load(str(root / "configs/owt_1b.py"))
  launcher = (root / "scripts/tpu_pod.sh").read_text()
  assert f'MOUNT="${{MOUNT:-{config.data.prepared}}}"' in launcher
  assert config.data.long_lines == "split" and config.data.packing
  # A v5e-256's chips: FSDP groups of fsdp_axis_size, replicated over the rest; whole rows each.
  assert 256 % config.train.fsdp_axis_size == 0 and config.train.batch_size % 256 == 0
  with pytest.raises(ValueError, match=r"not a prepared corpus .*cdm-prepare") as err:
    pipeline.prepare_data(config.data, str(tmp_path / "run"))
  assert "\n" not in str(err.value)
