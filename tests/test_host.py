"""cdm_jax.host.tune_malloc: freed XLA:CPU buffers are reused instead of faulted in again."""

import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from cdm_jax import host

# A fresh process: tune (or not), then call a jitted function whose temporary (a 64 MB cumsum)
# XLA:CPU allocates and frees on every call; print whether tuning applied and how many of 40
# calls took fewer than 1,000 minor page faults (the temporary alone is 16,384 pages). The tuned
# heap still grows now and then, in streaks, while it settles: count calls, not a median.
CHILD = """
import resource
import cdm_jax
applied = cdm_jax.tune_malloc()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x, axis=0) * x))
x = jnp.ones((2048, 8192), jnp.float32)
quiet = 0
for _ in range(40):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  quiet += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000
print(applied, quiet)
"""


def run_child(tune: bool):
  env = {**os.environ, "CDM_JAX_TUNE_MALLOC": "1" if tune else "0", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_tuned_allocator_reuses_freed_buffers():
  applied, quiet_calls = run_child(tune=True)
  assert applied
  assert quiet_calls >= 10, quiet_calls  # measured 30-38 of 40, also with two children at once
  applied_off, quiet_calls_off = run_child(tune=False)
  assert not applied_off
  assert quiet_calls_off == 0, quiet_calls_off  # glibc maps it afresh every call


def test_tune_malloc_after_jax_started_is_a_no_op():
  jnp.ones(3).block_until_ready()  # the runtime exists now
  if not host._applied:  # pylint: disable=protected-access
    assert host.tune_malloc() is False
