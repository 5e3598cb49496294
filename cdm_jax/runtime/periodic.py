"""Small helpers for loops with periodic actions: when is it time, and how long has it taken."""

import contextlib
import logging
import signal
import threading
import time

log = logging.getLogger(__name__)


def itstime(step: int, every: int, force: bool = False) -> bool:
  """True every `every` steps (never for 0), or when `force`d (e.g. at the last step)."""
  return force or (every > 0 and step % every == 0)


class Deadline:
  """A wall-clock budget in minutes from construction; 0 or less: none."""

  def __init__(self, minutes: float):
    self.minutes = minutes
    self._start = time.perf_counter()

  def passed(self) -> bool:
    return self.minutes > 0 and time.perf_counter() - self._start > 60 * self.minutes

  @property
  def seconds(self) -> float | None:
    """The budget in seconds, or None when there is none."""
    return 60 * self.minutes if self.minutes > 0 else None

  def elapsed_seconds(self) -> float:
    return time.perf_counter() - self._start


class Chrono:
  """Times windows of steps for throughput figures; time spent in `paused()` blocks (evaluation,
  sampling, checkpoints) is left out."""

  def __init__(self):
    self._start = time.perf_counter()
    self._steps = 0

  def tick(self, steps: int = 1):
    self._steps += steps

  @contextlib.contextmanager
  def paused(self):
    before = time.perf_counter()
    try:
      yield
    finally:
      self._start += time.perf_counter() - before

  def window(self) -> tuple[float, int]:
    """(seconds, steps) since the last call (or construction), and starts a new window."""
    now = time.perf_counter()
    seconds, steps = now - self._start, self._steps
    self._start, self._steps = now, 0
    return seconds, steps


# Set when a loop stopped early because this process, or another of its run, got SIGTERM: the
# CLIs then exit with PREEMPTED_EXIT_STATUS after the checkpoint, so `cdm-train ... && next` stops.
PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
_stopped_by_sigterm = []


def mark_stopped_by_sigterm(step: int):
  _stopped_by_sigterm.append(step)


def stopped_by_sigterm() -> int | None:
  """The step this process last stopped at on a SIGTERM (its own or a peer's), or None."""
  return _stopped_by_sigterm[-1] if _stopped_by_sigterm else None


class Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (then it checkpoints and returns)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: checkpointing and stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
