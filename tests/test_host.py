"""cdm_jax.runtime.allocator.tune_malloc: glibc's settings, checked on glibc's own accounting (mallinfo2).

The speed effect (minor page faults per training step) depends on the machine and is measured by
`benchmarks/bench.py`, not asserted here.
"""

import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from cdm_jax.runtime import allocator as host

# A fresh process: tune (or not), malloc 64 MiB, free it, and report glibc's counters: blocks
# newly served by mmap (hblks) by the malloc, and the heap bytes still held (arena) after the free.
CHILD = """
import ctypes
import cdm_jax
applied = cdm_jax.tune_malloc()

class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
              "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(applied, mapped, libc.mallinfo2().arena >= (64 << 20))
"""


def run_child(tune: bool):
  env = {**os.environ, "CDM_JAX_TUNE_MALLOC": "1" if tune else "0", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0] == "True", int(out[1]), out[2] == "True"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                    or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
                    reason="mallopt and mallinfo2 are glibc's (2.33+)")
def test_tuned_allocator_keeps_large_blocks_in_the_heap():
  applied, mapped, kept = run_child(tune=True)
  assert applied
  assert mapped == 0 and kept  # no mmap for a large block, and no trim after its free
  applied, mapped, kept = run_child(tune=False)
  assert not applied  # CDM_JAX_TUNE_MALLOC=0 leaves glibc alone: its default maps the block
  assert mapped == 1 and not kept


def test_tune_malloc_after_jax_started_is_a_no_op():
  jnp.ones(3).block_until_ready()  # the runtime exists now
  if not host._applied:  # pylint: disable=protected-access
    assert host.tune_malloc() is False
