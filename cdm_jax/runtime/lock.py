"""One job per workdir: a second training or distillation job on a workdir another job is using is
refused with one line, instead of two jobs interleaving checkpoints. The lock is an advisory
`flock` on WORKDIR/.lock taken by process 0, so the kernel releases it when the job ends in any way
(kill -9 included); a bucket (gs://) has no such lock and is not locked."""

import contextlib
import fcntl
import os

from cdm_jax.runtime import distributed, fs

LOCK_FILE = ".lock"


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str = "job"):
  """Holds the lock of `workdir` (created if missing) for the block; raises ValueError naming the
  holder's pid when another job holds it."""
  folder = fs.path(workdir)
  if fs.is_remote(folder) or not distributed.is_primary():
    yield
    return
  try:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as err:
    raise ValueError(f"{workdir} cannot be written ({err.strerror}); a {what} needs a writable "
                     "--workdir.") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      raise ValueError(f"{workdir} is in use by another {what} (pid {holder}); wait for it to end "
                       "or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the lock
