"""Host allocator settings that keep XLA:CPU's per-call buffers out of the kernel's page-fault path.

XLA:CPU allocates each call's temporary buffers with malloc and frees them at the end. glibc hands
large blocks out as fresh `mmap`s (or trims them back to the OS), so every call page-faults its
buffers in again. Kept in one arena that never maps or trims, the freed memory is reused as it is,
and CPU steps get faster; the cost is a process that keeps its peak heap (figures in
docs/performance.md).

Must run before JAX's first computation: the runtime's worker threads pick their malloc arena at
their first allocation. Every CLI calls it (`cli.common.user_errors_exit`); library users opt in with
`cdm_jax.tune_malloc()` before their first JAX call. CDM_JAX_TUNE_MALLOC=0 leaves the allocator alone.
"""

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_applied = False


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # no public API says whether a backend exists yet
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def tune_malloc() -> bool:
  """Makes glibc keep and reuse freed memory (one arena, no mmap, no trim). Returns whether the
  settings are in force; a no-op off Linux/glibc, when CDM_JAX_TUNE_MALLOC=0, or after JAX started
  its runtime (the worker threads already have their arenas; logged at INFO)."""
  global _applied
  if _applied:
    return True
  if os.environ.get("CDM_JAX_TUNE_MALLOC", "1") == "0":
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  if _backends_started():
    log.info("tune_malloc() skipped: JAX's runtime already started. Call cdm_jax.tune_malloc() "
             "before the first JAX computation for faster CPU steps.")
    return False
  libc = ctypes.CDLL("libc.so.6")
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1),
              (_M_TOP_PAD, 64 << 20))
  _applied = all(libc.mallopt(param, value) == 1 for param, value in settings)
  return _applied
