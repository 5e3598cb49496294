"""cdm_jax.host.tune_malloc: freed XLA:CPU buffers are reused instead of faulted in again."""

import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from cdm_jax import host

# A fresh process: tune (or not), then call a jitted function whose temporary (a 64 MB cumsum)
# XLA:CPU allocates and frees on every call; print whether tuning applied and the median minor
# page faults of calls 11-20 (the tuned heap still grows now and then while it settles).
CHILD = """
import resource, statistics
import cdm_jax
applied = cdm_jax.tune_malloc()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x, axis=0) * x))
x = jnp.ones((2048, 8192), jnp.float32)
faults = []
for _ in range(20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, statistics.median(faults[10:]))
"""


def run_child(tune: bool):
  env = {**os.environ, "CDM_JAX_TUNE_MALLOC": "1" if tune else "0", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0] == "True", float(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_tuned_allocator_reuses_freed_buffers():
  applied, faults = run_child(tune=True)
  assert applied
  assert faults < 1000, faults  # the temporary alone is 16,384 pages
  applied_off, faults_off = run_child(tune=False)
  assert not applied_off
  assert faults_off > 10_000, faults_off  # glibc maps it afresh: what the tuning is for


def test_tune_malloc_after_jax_started_is_a_no_op():
  jnp.ones(3).block_until_ready()  # the runtime exists now
  if not host._applied:  # pylint: disable=protected-access
    assert host.tune_malloc() is False
