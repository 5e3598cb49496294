"""Faults injected on purpose: unreadable checkpoints fall back to older ones, conflicting resumes
stop before anything is written."""

import json
import os
import logging
import shutil

import numpy as np
import pytest

import cdm_jax
from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing
from cdm_jax.cli import common as cli
from cdm_jax.runtime import parallel
from cdm_jax.training import train

from conftest import trained_config


def _corrupt(step_dir, how):
  files = sorted(p for p in step_dir.rglob("*") if p.is_file())
  if how == "truncated":
    for path in files:
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
  elif how == "missing_metadata":
    for path in files:
      if "METADATA" in path.name or path.name == "metadata":
        path.unlink()
  elif how == "garbage":
    rng = np.random.default_rng(0)
    for path in files:
      path.write_bytes(rng.bytes(max(16, path.stat().st_size)))


@pytest.fixture(scope="module")
def loaded(trained):
  return cdm_jax.load(str(trained[0]))


@pytest.fixture
def copied(trained, tmp_path):
  workdir, _ = trained
  shutil.copytree(workdir, tmp_path / "run")
  return tmp_path / "run"


@pytest.mark.parametrize("how", ["truncated", "missing_metadata", "garbage"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_older_one(copied, how, caplog):
  _corrupt(copied / "checkpoints" / "20", how)
  with caplog.at_level(logging.WARNING, logger="cdm_jax"):
    generator = cdm_jax.load(str(copied))
  assert generator.step == 10 and "checkpoints/20 is unreadable" in caplog.text
  assert (copied / "checkpoints" / "20").is_dir()  # loading only reads: nothing moved
  config = builders.load_config(str(copied))
  model, tx = builders.make_model(config), builders.make_optimizer(config.train)
  manager = checkpointing.make_manager(str(copied))
  state, data_state, step = checkpointing.restore_latest(
      manager, builders.abstract_state(config, model, tx, parallel.make_mesh()))
  manager.close()
  assert step == 10 and int(state.step) == 10 and data_state["index"] > 0
  moved = list((copied / checkpointing.QUARANTINE).iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["20"] and any(moved[0].rglob("*"))
  assert not (copied / "checkpoints" / "20").exists()


def test_no_readable_checkpoint_is_one_clear_error_and_moves_nothing(copied):
  for step in ("10", "20"):
    _corrupt(copied / "checkpoints" / step, "garbage")
  with pytest.raises(RuntimeError, match=r"No readable checkpoint .*tried steps \[20, 10\]"):
    cdm_jax.load(str(copied))
  config = builders.load_config(str(copied))
  model, tx = builders.make_model(config), builders.make_optimizer(config.train)
  with pytest.raises(RuntimeError, match="No readable checkpoint"):
    checkpointing.restore_latest(checkpointing.make_manager(str(copied)),
                                 builders.abstract_state(config, model, tx, parallel.make_mesh()))
  assert sorted(p.name for p in (copied / "checkpoints").iterdir()) == ["10", "20"]


def test_a_conflicting_resume_stops_before_writing_anything(copied, corpus):
  saved = (copied / "config.json").read_text()
  config = trained_config(corpus)
  config.model.width = 48
  config.data.seq_len = 12
  with pytest.raises(ValueError) as err:
    train.train_and_evaluate(config, str(copied))
  assert "model.width: 32 -> 48" in str(err.value) and "data.seq_len: 16 -> 12" in str(err.value)
  assert "new --workdir" in str(err.value)
  assert (copied / "config.json").read_text() == saved
  assert cdm_jax.load(str(copied)).step == 20  # still usable


def test_an_allowed_change_is_recorded_in_the_history(copied, corpus):
  config = trained_config(corpus)
  config.sample.num_steps = 7
  config.train.sample_every_steps = 0
  config.train.eval_every_steps = 0
  train.train_and_evaluate(config, str(copied))  # already at num_train_steps: nothing to train
  history = [json.loads(line) for line in (copied / "config_history.jsonl").read_text().splitlines()]
  assert history[-1]["changed"]["sample.num_steps"] == [5, 7]
  assert json.loads((copied / "config.json").read_text())["sample"]["num_steps"] == 7


def test_a_field_added_by_a_newer_library_may_arrive_at_its_default():
  from cdm_jax.runtime import config_record as record
  defaults = {"diffusion": {"warp_follow": "loss", "schedule": "cosine"},
              "condition": {"prefix": 0.2}}
  saved = {"diffusion": {"schedule": "cosine"}}
  at_default = {"diffusion": {"schedule": "cosine", "warp_follow": "loss"}}
  conflicts, allowed = record.config_changes(saved, at_default, defaults)
  assert not conflicts and allowed == {"diffusion.warp_follow": ("(absent)", "loss")}
  elsewhere = {"diffusion": {"schedule": "cosine", "warp_follow": "slope"}}
  assert "diffusion.warp_follow" in record.config_changes(saved, elsewhere, defaults)[0]
  # An absent condition block meant nothing known, not the default mixture.
  conditioned = {**at_default, "condition": {"prefix": 0.2}}
  assert "condition.prefix" in record.config_changes(saved, conditioned, defaults)[0]
  assert "diffusion.warp_follow" in record.config_changes(saved, at_default)[0]  # no defaults given


def test_a_changed_corpus_under_the_same_workdir_is_refused(copied, corpus):
  original = corpus.read_text()
  edited = copied.parent / "edited.txt"
  edited.write_text(original + "\nan extra line")
  config = trained_config(corpus)
  shutil.copy(edited, corpus)
  try:
    with pytest.raises(ValueError, match=r"corpus differs .*\(600 examples then, 601 now"):
      train.train_and_evaluate(config, str(copied))
  finally:
    corpus.write_text(original)


def test_a_full_disk_during_a_save_is_one_clear_error_and_loses_no_checkpoint(copied, corpus,
                                                                             monkeypatch, capsys):
  """ENOSPC injected at the file layer into every write of step 22's save (Orbax's metadata and
  commit files): training stops with a SaveError naming the step to resume from, the committed
  checkpoints stay readable and no Orbax thread outlives the error. (The rerun that then ends
  bit-identical to an uninterrupted run: experiments/faults/run.py's full-disk trials.)"""
  import builtins
  import errno
  import threading
  real_open = builtins.open

  def full_disk_open(file, mode="r", *args, **kwargs):
    if any(m in mode for m in "wax") and "checkpoints/22.orbax-checkpoint-tmp" in str(file):
      raise OSError(errno.ENOSPC, "No space left on device", str(file))
    return real_open(file, mode, *args, **kwargs)

  config = trained_config(corpus, num_train_steps=22, eval_every_steps=0, sample_every_steps=0)
  monkeypatch.setattr(builtins, "open", full_disk_open)
  with pytest.raises(checkpointing.SaveError, match=r"No space left.*resume from step 20"):
    train.train_and_evaluate(config, str(copied))
  assert not [t for t in threading.enumerate() if type(t).__module__.startswith("orbax")]
  monkeypatch.setattr(builtins, "open", real_open)
  assert cdm_jax.load(str(copied)).step == 20
  assert sorted(p.name for p in (copied / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
  monkeypatch.setattr(cli.logging, "shutdown", lambda: None)  # keep pytest's log capture open
  capsys.readouterr()
  wrapped = cli.user_errors_exit(lambda argv: (_ for _ in ()).throw(checkpointing.SaveError("disk")))
  with pytest.raises(SystemExit) as stop:
    wrapped([])
  assert stop.value.code == 1 and capsys.readouterr().err == "error: disk\n"


def test_loading_a_workdir_never_unpickles_or_evaluates_code(trained, monkeypatch):
  """The config is JSON, the tokenizer a protobuf, checkpoints Orbax arrays: a workdir from
  someone else cannot run code on load."""
  import builtins  # pylint: disable=g-import-not-at-top
  import marshal  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  calls = []

  def refuse(name):
    def refused(*args, **kwargs):
      calls.append(name)
      raise AssertionError(f"{name} called while loading a workdir")
    return refused

  for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                       (marshal, "loads"), (builtins, "eval"), (builtins, "exec")]:
    monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
  workdir, _ = trained
  generator = cdm_jax.load(str(workdir))
  assert generator.step == 20 and not calls


@pytest.mark.parametrize("overrides,match", [
    ({"steps": 0}, "num_steps must be >= 1"), ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"seed": -1}, "seed must be"), ({"seed": 2**32}, "seed must be"),
    ({"sampler": "nope"}, "Unknown sampler"), ({"clamp_temperature": 0.0}, "clamp_temperature"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be finite"),
    ({"prefix": "the", "gap_length": 0, "suffix": "cat"}, "gap_length must be >= 1"),
])
def test_out_of_range_sampling_arguments_are_refused(loaded, overrides, match):
  generator = loaded
  overrides = dict(overrides)
  num_samples = overrides.pop("num_samples", 2)
  with pytest.raises(ValueError, match=match):
    generator.sample(num_samples, **overrides)


@pytest.mark.slow
def test_a_corrected_command_after_a_failed_first_run_just_works(corpus, tmp_path):
  """A first run that fails before its first checkpoint (a bad corpus path, then a vocabulary the
  corpus cannot support) leaves nothing that blocks the corrected command."""
  workdir = tmp_path / "run"
  bad_path = trained_config(corpus, num_train_steps=2, checkpoint_every_steps=2)
  bad_path.data.path = str(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError):
    train.train_and_evaluate(bad_path, str(workdir))
  other = tmp_path / "other.txt"
  other.write_text("a b c\n" * 20)
  too_large = trained_config(other, num_train_steps=2, checkpoint_every_steps=2)
  too_large.data.vocab_size = 5000
  with pytest.raises(ValueError, match="vocab"):
    train.train_and_evaluate(too_large, str(workdir))
  assert (workdir / "data_fingerprint.json").is_file()  # the corpus record of the failed run
  fixed = trained_config(corpus, num_train_steps=2, checkpoint_every_steps=2)
  metrics = train.train_and_evaluate(fixed, str(workdir))
  assert metrics["step"] == 2
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["path"] == str(corpus) and saved["data"]["vocab_size"] == 32
  # Once a checkpoint exists, the same change is refused as before.
  with pytest.raises(ValueError, match="data.path"):
    train.train_and_evaluate(trained_config(other, num_train_steps=2), str(workdir))


@pytest.mark.slow
def test_a_second_job_on_a_busy_workdir_is_refused(corpus, tmp_path):
  from cdm_jax.runtime import lock  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  config = trained_config(corpus, num_train_steps=2, checkpoint_every_steps=2)
  with lock.workdir_lock(str(workdir), "training job"):
    with pytest.raises(ValueError, match=rf"{workdir} is in use by another training job \(pid "
                                         rf"{os.getpid()}\)"):
      train.train_and_evaluate(config, str(workdir))
    assert not (workdir / "config.json").exists()  # refused before writing anything
  assert train.train_and_evaluate(config, str(workdir))["step"] == 2  # free again


def test_a_read_only_workdir_is_one_clear_error(corpus, tmp_path, monkeypatch):
  """As root (CI) no folder is read-only, so the file system's answer is injected: EROFS."""
  import errno  # pylint: disable=g-import-not-at-top
  from cdm_jax.runtime import lock  # pylint: disable=g-import-not-at-top

  def read_only(*unused_args, **unused_kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
  monkeypatch.setattr(lock.os, "open", read_only)
  with pytest.raises(ValueError, match=r"cannot be written \(Read-only file system\); a training "
                                       r"job needs a writable --workdir"):
    train.train_and_evaluate(trained_config(corpus, num_train_steps=2), str(tmp_path / "ro"))
