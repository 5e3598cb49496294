"""Workdirs on a bucket: every file the library writes itself goes through epath to a gs:// path
(here an in-memory stand-in for Google Cloud Storage registered with fsspec), nothing lands on
local disk, and the run reads back from there."""

import json
import os

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from conftest import tiny_config  # tests/ is on sys.path
from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing
from cdm_jax.runtime import fs
from cdm_jax.runtime import metric_writers
from cdm_jax.runtime import config_record as record
from cdm_jax.training import train
from cdm_jax.data import pipeline, tokenizer as tokenizer_lib


class _FakeBucket(MemoryFileSystem):
  """What epath's gs:// backend asks fsspec for ("gcs"), kept in memory."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  for name in _FakeBucket.protocol:
    fsspec.register_implementation(name, _FakeBucket, clobber=True)
  _FakeBucket.store.clear()
  monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would land here
  yield _FakeBucket.store
  _FakeBucket.store.clear()
  assert not os.listdir(tmp_path), os.listdir(tmp_path)


def test_paths_keep_their_bucket_and_local_ones_become_absolute(tmp_path, monkeypatch):
  assert str(fs.path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  monkeypatch.chdir(tmp_path)
  assert str(fs.path("run")) == str(tmp_path / "run")
  assert str(fs.path("~/x")) == os.path.expanduser("~/x")


def test_a_gs_workdir_is_written_to_the_bucket_only(corpus, bucket, monkeypatch):
  workdir = "gs://bucket/run"
  config = tiny_config(corpus)
  fs.path(workdir).mkdir(parents=True, exist_ok=True)
  record.write_config(workdir, config)
  config.train.num_train_steps = 40  # a resume that changes an allowed field: history appended
  record.write_config(workdir, config)
  config.train.num_train_steps = 60
  record.write_config(workdir, config)
  data = pipeline.prepare_data(config.data, workdir)
  writer = metric_writers.MetricWriter(workdir, enabled=True)
  writer.write_scalars(5, {"loss": 1.5})
  writer.write_scalars(10, {"loss": 1.25})
  writer.close()
  train.write_samples(fs.path(workdir) / "samples" / "step_00000010.txt", ["a b", "c"])
  # Orbax itself needs google-cloud-storage for a bucket (the `gcs` extra): here it only has to
  # be handed the bucket's path.
  handed = []
  monkeypatch.setattr(checkpointing.ocp, "CheckpointManager",
                      lambda directory, **kwargs: handed.append(str(directory)))
  checkpointing.make_manager(workdir)
  assert handed == ["gs://bucket/run/checkpoints"]

  names = {key.split("gs://bucket/run/")[-1] for key in bucket}
  assert {"config.json", "config_history.jsonl", "tokenizer.model", "metrics.jsonl",
          "data_fingerprint.json", "samples/step_00000010.txt"} <= names
  assert builders.load_config(workdir).train.num_train_steps == 60
  history = (fs.path(workdir) / record.HISTORY_FILE).read_text().splitlines()
  assert [json.loads(h)["changed"]["train.num_train_steps"] for h in history] == [[20, 40], [40, 60]]
  metrics = (fs.path(workdir) / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(m)["step"] for m in metrics] == [5, 10]
  loaded = tokenizer_lib.load_tokenizer(workdir)
  assert loaded.serialized_model_proto() == data.tokenizer.serialized_model_proto()
  # A second prepare_data reuses the bucket's tokenizer and checks the corpus fingerprint.
  assert pipeline.prepare_data(config.data, workdir).train.shape == data.train.shape
