"""Multi-process runs (TPU VM pods, several GPU hosts, or local processes for tests): start-up,
bringing global arrays to the host, writing from one process, and agreeing on a stop.

JAX runs one process per host; every process runs the same program on its own devices and the
arrays of a compiled step span all of them. The rules the library keeps:

* every process reads its share of each batch (`parallel.shard_batch`), or every process passes
  the same whole array (`parallel.global_array`);
* an array that spans other processes' devices reaches the host through `to_host` (an all-gather),
  never `jax.device_get` (which cannot fetch non-addressable shards);
* files in the workdir are written by process 0 only, inside `on_primary` (the others wait, then
  read them; an error there stops every process); Orbax coordinates its own checkpoint writes;
* a decision taken by one process (SIGTERM, its clock passing the time limit) is shared with
  `any_process` before anybody acts on it, so no process waits in a collective the others left.
"""

import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)
# Environment variables read when the flags leave a field unset (e.g. set by a launcher).
ENV_COORDINATOR = "CDM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "CDM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CDM_JAX_PROCESS_ID"


def _env_int(name: str):
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer.") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300):
  """Joins this process to a multi-process run.

  Without arguments (and without the CDM_JAX_* variables) JAX detects the cluster itself: a TPU VM
  pod slice, SLURM, Open MPI. With a coordinator ("host:port" of process 0), the process count and
  this process's id (flags or CDM_JAX_COORDINATOR / CDM_JAX_NUM_PROCESSES / CDM_JAX_PROCESS_ID),
  any machines can join, local CPU processes included (their collectives then go over gloo).
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None:
    num_processes = _env_int(ENV_NUM_PROCESSES)
  if process_id is None:
    process_id = _env_int(ENV_PROCESS_ID)
  explicit = (coordinator_address, num_processes, process_id)
  if all(x is None for x in explicit):
    jax.distributed.initialize()  # the cluster says who is who (TPU pods, SLURM, MPI)
    return
  if any(x is None for x in explicit):
    raise ValueError("A multi-process run without cluster detection needs all three of the "
                     "coordinator address (host:port of process 0), the number of processes and "
                     f"this process's id; got {explicit}.")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"Process id {process_id} is not in [0, {num_processes}).")
  if ":" not in coordinator_address:
    raise ValueError(f"The coordinator address must be host:port, got {coordinator_address!r}.")
  # CPU devices of different processes talk over gloo; accelerators use their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=timeout_s)
  log.info("Process %d of %d joined %s.", process_id, num_processes, coordinator_address)


def is_primary() -> bool:
  """Whether this process writes the workdir's files (process 0)."""
  return jax.process_index() == 0


def to_host(tree):
  """The global value of every array in `tree` as NumPy, on every process (an all-gather for
  arrays with shards on other processes' devices; a plain fetch otherwise)."""
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


# With several processes, how often (in dispatches) the training and distillation loops pool their
# stop requests: each pooling is a small all-gather that waits for the step before it.
STOP_SYNC_DISPATCHES = 10


def stop_requested(flag: bool, dispatch: int) -> bool:
  """`any_process(flag)` at every STOP_SYNC_DISPATCHES-th dispatch (at every one with a single
  process), False in between: every process calls it after every dispatch and gets one answer."""
  if jax.process_count() == 1 or dispatch % STOP_SYNC_DISPATCHES == 0:
    return any_process(flag)
  return False


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any (every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
  return bool(np.any(flags))


def on_primary(fn, what: str):
  """Runs `fn()` on process 0 while the others wait; returns its result there (None elsewhere).

  An error on process 0 is raised there and, as a RuntimeError naming `what`, on every other
  process, so that none is left waiting in a collective for a process that stopped.
  """
  result, error = None, None
  if is_primary():
    try:
      result = fn()
    except Exception as err:  # pylint: disable=broad-except  (re-raised below)
      error = err
  if any_process(error is not None):
    if error is not None:
      raise error
    raise RuntimeError(f"Process 0 failed while {what}; its log says why.")
  return result
