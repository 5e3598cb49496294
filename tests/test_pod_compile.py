"""Compiling for TPU slices on this host (`cdm-compile`, `evaluation.pod_compile`): slice names,
loop-aware FLOP and collective counts checked on programs whose counts are known, and (slow, the
real TPU compiler through libtpu) a tiny config compiled for a v5e-4."""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.evaluation import batch_search, pod_compile, program_stats
from cdm_jax.runtime import config_files, topology
from cdm_jax.training import flops as flops_lib

from conftest import ROOT

P = jax.sharding.PartitionSpec


@pytest.mark.parametrize("name,compiler,chips", [
    ("v5e-64", "v5e:8x8", 64), ("v5litepod-16", "v5e:4x4", 16), ("v4-8", "v4:2x2x1", 4),
    ("v4-64", "v4:2x4x4", 32), ("v5p-128", "v5p:4x4x4", 64), ("v6e-8", "v6e:2x4", 8),
    ("v5e:2x2", "v5e:2x2", 4)])
def test_slice_names_as_users_write_them(name, compiler, chips):
  tpu_slice = topology.parse_slice(name)
  assert tpu_slice.compiler_topology == compiler and tpu_slice.num_chips == chips


@pytest.mark.parametrize("name,message", [("v5e-3", "known v5e slices: v5e-4, v5e-8"),
                                          ("v9-8", "Unknown TPU topology 'v9-8'; known: v4-8"),
                                          ("v4-5", "known v4 slices"),
                                          ("v5e:2x2x2", "v5e slices are 2-D")])
def test_unknown_slices_are_refused_with_the_known_ones(name, message):
  with pytest.raises(ValueError, match=message):
    topology.parse_slice(name)


def test_matmul_flops_count_every_loop_iteration_and_the_costliest_branch():
  """A scanned stack of 5 [8, 16] x [16, 16] matmuls, a cond whose branches hold one and two, and
  a plain one: 2 * 8 * 16 * 16 FLOPs each, 5 + 2 + 1 of them."""
  def fn(x, w, flag):
    y, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=5)
    y = jax.lax.cond(flag, lambda h: h @ w, lambda h: (h @ w) @ w, y)
    return y @ w
  x, w = jnp.ones((8, 16)), jnp.ones((16, 16))
  assert program_stats.matmul_flops(fn, x, w, True) == 8 * 2 * 8 * 16 * 16
  # Batched contractions: [4, 8, 16] x [4, 16, 3] is 4 * 8 * 3 outputs of 16 products each.
  batched = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)
  assert program_stats.matmul_flops(batched, jnp.ones((4, 8, 16)), jnp.ones((4, 16, 3))) == (
      2 * 4 * 8 * 3 * 16)
  # Outside shard_map the shapes are global: per device, an even split over the devices; inside
  # it they are already one device's.
  assert program_stats.matmul_flops(fn, x, w, True, num_devices=4) == 2 * 8 * 16 * 16 * 8 / 4
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:4]), ("d",))
  per_device = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(P("d"), P()),
                             out_specs=P("d"))
  assert program_stats.matmul_flops(per_device, x, w, num_devices=4) == 2 * 2 * 16 * 16


def _looped_psum_hlo(devices) -> str:
  """A shard_map over `devices` with one psum of [32] float32 per iteration of a 3-step loop and
  one all-gather of [8] float32 outside it, compiled: its HLO text."""
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))

  def per_device(x):
    x, _ = jax.lax.scan(lambda h, _: (jax.lax.psum(h * 1.5, "d"), None), x, None, length=3)
    return x, jax.lax.all_gather(x[:8], "d", tiled=True)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(), out_specs=(P(), P()),
                             check_vma=False))
  arg = jax.ShapeDtypeStruct((32,), jnp.float32,
                             sharding=jax.sharding.NamedSharding(mesh, P()))
  with pod_compile._no_persistent_cache():  # pylint: disable=protected-access
    return fn.lower(arg).compile().as_text()


def test_collectives_are_counted_per_loop_iteration_on_cpu_devices():
  found = program_stats.collectives(_looped_psum_hlo(jax.devices()[:4]))
  assert found["all-reduce"] == {"count": 3, "bytes": 3 * 32 * 4}
  assert found["all-gather"] == {"count": 1, "bytes": 4 * 8 * 4}


def test_the_roofline_takes_the_slowest_of_compute_memory_and_collectives():
  chip = topology.CHIPS["v5e"]
  bound = program_stats.roofline(flops=197e12, hbm_bytes=819e9 / 2, collective_bytes=0, chip=chip)
  assert bound["bound_by"] == "compute" and math.isclose(bound["seconds"], 1.0)
  bound = program_stats.roofline(flops=0, hbm_bytes=0, collective_bytes=800e9, chip=chip)
  assert bound["bound_by"] == "collectives" and math.isclose(bound["seconds"], 2.0)


# --- The TPU compiler (libtpu), slow: each compile takes seconds to a minute on two cores. ---


def _tiny(**overrides):
  config = config_files.load(ROOT / "configs/tiny.py", {"data.path": "unused.txt", **overrides})
  return config


@functools.lru_cache(maxsize=None)
def _v5e4_devices():
  return topology.slice_devices(topology.parse_slice("v5e-4"))


@pytest.mark.slow
def test_collectives_are_counted_per_loop_iteration_in_tpu_hlo():
  """The TPU compiler turns the small all-gather into an all-reduce of a padded [32] array: four
  collectives of 128 bytes per call, three of them the loop's."""
  found = program_stats.collectives(_looped_psum_hlo(_v5e4_devices()))
  assert sum(c["count"] for c in found.values()) == 4
  assert sum(c["bytes"] for c in found.values()) == 4 * 32 * 4


@pytest.mark.slow
def test_a_scanned_rematerialized_train_step_compiles_for_v5e_with_its_flops_counted():
  """configs/tiny.py with scanned, rematerialized layers (4 of them) and self-conditioning on
  every batch, for a v5e-4: bytes per chip, XLA's FLOPs below the loop-counted ones (a scanned
  stack's body counted once), and the loop-counted matmul FLOPs within 10% of
  `training.flops`' count with the recomputed forward; the sample function compiles too."""
  config = _tiny(**{"model.scan_layers": True, "model.remat": True, "model.num_layers": 4,
                    "diffusion.self_cond_prob": 1.0})
  result = pod_compile.compile_run(config, "v5e-4", ("train_step", "sample"))
  train, sample = result["functions"]
  assert result["chips"] == 4 and result["mesh"] == {"data": 4, "fsdp": 1}
  assert train["argument_bytes"] > 0 and train["temp_bytes"] > 0 and sample["total_bytes"] > 0
  analytic = flops_lib.diffusion_train_flops(config)["train_executed"] / 4
  assert train["analytic_flops"] == pytest.approx(analytic)
  assert abs(train["program_flops"] / analytic - 1) < 0.10, (train["program_flops"], analytic)
  assert train["xla_flops"] < train["program_flops"]
  assert abs(sample["program_flops"] / sample["analytic_flops"] - 1) < 0.10
  assert train["roofline"]["seconds"] > 0 and train["tokens_per_second_per_chip"] > 0
  pod_compile.check_fit(result)  # a tiny model fits


@pytest.mark.slow
def test_the_pod_launcher_compiles_first_and_refuses_what_cannot_fit():
  """scripts/tpu_pod.sh's dry run compiles the config for the slice before any gcloud command:
  a tiny config passes and the launch line follows. Two layers of width 8192 replicated on 16 GiB
  chips (~24 GiB of state per chip, more of temporaries) stop it with cdm-compile's one error line
  (exit 2, no gcloud command) naming the function, its bytes against the chip's and the largest
  arguments: here the TPU compiler gives up on the temporaries first; where it does not,
  `check_fit` compares the total with the chip."""
  env = {**os.environ, "DRY_RUN": "1", "TPU_NAME": "cdm-pod", "ZONE": "us-west4-a",
         "WORKDIR": "gs://bucket/run", "ACCELERATOR": "v5e-4", "CONFIG": "configs/tiny.py",
         "COMPILE_FUNCTIONS": "train_step"}
  launch = lambda extra: subprocess.run(
      ["bash", str(ROOT / "scripts/tpu_pod.sh"), "launch"], capture_output=True, text=True,
      cwd=ROOT, timeout=600, env={**env, "EXTRA_FLAGS": f"--config.data.path=x.txt {extra}"})
  fits = launch("")
  assert fits.returncode == 0 and "cdm-train" in fits.stdout, fits.stderr[-3000:]
  wide = launch("--config.model.width=8192 --config.model.mlp_dim=32768 "
                "--config.model.num_heads=8")
  errors = [line for line in wide.stderr.splitlines() if line.startswith("error:")]
  assert wide.returncode == 2 and wide.stdout == "", wide.stderr[-3000:]
  assert len(errors) == 1 and errors[0].startswith("error: train_step needs ")
  assert "a v5e chip's 16.00 GiB" in errors[0] and "largest arguments: " in errors[0]
  assert "Traceback" not in wide.stderr


def test_find_batch_bisects_to_the_largest_fitting_multiple_of_the_chips(monkeypatch):
  """A stand-in compile whose bytes per chip grow linearly with the batch (the limit: 95% of a
  100-byte chip, crossed after 44 rows per chip of a v5e-4): 176, found in a few compiles from the
  line through measured batches, every batch tried a multiple of the 4 chips; and the same when
  memory does not grow with the batch, at no more than twice plain bisection's compiles."""
  def fake(bytes_of):
    def compile_run(config, slice_name, names):
      del names
      return {"slice": slice_name, "chip": {"name": "v5e", "hbm_bytes": 100},
              "functions": [{"function": "train_step", "total_bytes": 0, "temp_bytes": 0,
                             "resident_bytes": bytes_of(config.train.batch_size // 4),
                             "largest_arguments": []}]}
    return compile_run
  monkeypatch.setattr(topology.Chip, "hbm_bytes", property(lambda self: 100), raising=False)
  for bytes_of, most in ((lambda per_chip: 7 + 2 * per_chip, 6), (lambda p: 95 if p <= 44 else 96,
                                                                 22)):
    monkeypatch.setattr(pod_compile, "compile_run", fake(bytes_of))
    found = batch_search.find_batch(_tiny(), "v5e-4", upper=1 << 12)
    assert found["batch"] == 176 and found["per_chip"] == 44, found
    assert all(batch % 4 == 0 for batch in found["tried"]) and len(found["tried"]) <= most


def test_without_libtpu_the_extra_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # not installed: its import fails
  with pytest.raises(ImportError, match=r"pip install 'cdm_jax\[tpu\]'"):
    topology.slice_devices(topology.parse_slice("v5e-4"))


def test_a_batch_the_chips_do_not_divide_is_refused_before_compiling():
  with pytest.raises(ValueError, match="train.batch_size=8 does not split over the slice's 64 "
                                       "chips; use a multiple of 64"):
    pod_compile.check_batch(_tiny(), 64)
