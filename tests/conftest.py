"""Four fake CPU devices for every test (2-4 keeps XLA's CPU collectives reliable on 2 cores), and
rendezvous timeouts that survive a starved CPU (below), and one persistent compilation cache: many tests (and the CLIs' subprocesses, which inherit the
environment) compile the same tiny programs from fresh closures, which JAX's in-memory cache cannot
share. The cache is kept between runs in `.pytest_cache/xla` (JAX keys every entry by the program,
the compile options, the device assignment and the JAX/XLA versions, so a stale entry is never
used), which makes a second run of the fast tier much faster; CI (CI=true) uses a fresh one.

Tiers: `-m "not slow"` is the fast tier. A test is slow when it is marked so, or when it reads the
shared `trained` workdir (building it trains a model), which this file marks automatically."""

import atexit
import os
import pathlib
import shutil
import tempfile

# XLA:CPU aborts the process (SIGABRT, "Termination timeout for `all-reduce` ... Exiting to ensure a
# consistent program state") when the fake devices of one collective do not all arrive within its
# rendezvous timeout. Two pytest workers plus a CLI subprocess on 2 cores starve some device
# threads for that long; the generous timeouts below keep a slow collective a slow one.
# The tests' programs are tiny: compiling them costs far more than running them, so LLVM does no
# optimisation (about 30% off the fast tier's wall time from a cold cache; results stay within
# every test's tolerance, and each bit-exact comparison compiles both sides the same way).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0"
                           " --xla_llvm_disable_expensive_passes=true"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=900"
                           " --xla_cpu_collective_call_warn_stuck_timeout_seconds=300"
                           " --xla_cpu_collective_timeout_seconds=900").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  if os.environ.get("CI"):
    _CACHE = tempfile.mkdtemp(prefix="cdm_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  else:
    _CACHE = str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla")
    os.makedirs(_CACHE, exist_ok=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from cdm_jax.runtime import config_files  # pylint: disable=wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat ran on under mat log big small red blue green tree house bird".split()


def tiny_config(corpus_path, **train_overrides):
  config = config_files.load(str(ROOT / "configs/tiny.py"))
  config.data.path = str(corpus_path)
  config.train.update(train_overrides)
  return config


def write_word_lines(path, lines: int, words: tuple[int, int], seed: int):
  """A text corpus of `lines` lines of WORDS, each of words[0] .. words[1] - 1 words."""
  rng = np.random.default_rng(seed)
  path.write_text("\n".join(" ".join(rng.choice(WORDS, rng.integers(*words)))
                            for _ in range(lines)))
  return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  return write_word_lines(tmp_path_factory.mktemp("corpus") / "corpus.txt", 600, (2, 7), seed=0)


def trained_overrides(corpus_path, **train_overrides) -> dict:
  """The dotted overrides of configs/tiny.py that make the `trained` workdir's config: the corpus,
  time warping on, and `train_overrides` (tests/multiprocess_worker.py gets them in its spec)."""
  return {"data.path": str(corpus_path), "diffusion.time_warp": True,
          **{f"train.{key}": value for key, value in train_overrides.items()}}


def trained_config(corpus_path, **train_overrides):
  """configs/tiny.py with time warping on: the `trained` workdir's config."""
  return config_files.load(str(ROOT / "configs/tiny.py"),
                           trained_overrides(corpus_path, **train_overrides))


@pytest.fixture(scope="session")
def trained(corpus, tmp_path_factory):
  """A workdir trained with `trained_config` (20 steps, evaluating and sampling every 10), shared
  by the tests that only read it."""
  from cdm_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("run")
  metrics = train.train_and_evaluate(trained_config(corpus), str(workdir))
  return workdir, metrics


# Fixtures that rest on the shared trained workdir: a test using one is slow.
TRAINED_FIXTURES = {"trained", "copied", "loaded"}


def pytest_collection_modifyitems(items):
  for item in items:
    if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
