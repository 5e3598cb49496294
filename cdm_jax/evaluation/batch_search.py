"""`find_batch`: the largest global batch of a run whose compiled functions fit a TPU slice's
chips, by compiles through `pod_compile` (`cdm-compile --find_batch`)."""

import sys

import ml_collections

from cdm_jax.evaluation import pod_compile
from cdm_jax.runtime import topology


def _line_guess(low: int, high: int, top: int, fitting: dict, failing: dict, limit: float):
  """Where the line through two measured batches meets the limit: the largest batch that fit and
  the smallest that did not, or (nothing failed yet) the two largest that fit; None if unknown."""
  if low in fitting and high in failing and failing[high] > fitting[low]:
    return low + (limit - fitting[low]) * (high - low) / (failing[high] - fitting[low])
  if high == top and len(fitting) >= 2:
    (a, used_a), (b, used_b) = sorted(fitting.items())[-2:]
    if used_b > used_a:
      return b + (limit - used_b) * (b - a) / (used_b - used_a)
  return None


def find_batch(config: ml_collections.ConfigDict, slice_name: str, *, upper: int = 1 << 16,
               fraction: float = pod_compile.FIT_FRACTION, names=("train_step",)) -> dict:
  """The largest global batch (a multiple of the chip count) whose `names` functions fit, by
  bisection over compiles. Memory grows about linearly with the batch, so after the config's
  batch and twice it each probe is where the line through the largest batch that fit and the
  smallest that did not (regula falsi) meets the limit; where a probe did not compile at all, the
  interval is halved instead.
  {"batch": ..., "per_chip": ..., "tried": {batch: bytes per chip, or None if it did not compile}}."""
  chips = topology.parse_slice(slice_name).num_chips
  limit = fraction * topology.parse_slice(slice_name).chip.hbm_bytes
  tried = {}

  def resident(per_chip: int) -> float | None:
    trial = ml_collections.ConfigDict(config.to_dict())
    trial.train.batch_size = per_chip * chips
    try:
      result = pod_compile.compile_run(trial, slice_name, names)
      tried[per_chip * chips] = max(r["resident_bytes"] for r in result["functions"])
    except ValueError as err:
      if "needs" not in str(err):
        raise
      tried[per_chip * chips] = None
    used = tried[per_chip * chips]
    print(f"find_batch: global batch {per_chip * chips}: "
          f"{'does not compile' if used is None else pod_compile._gib(used) + ' per chip'} (limit "
          f"{pod_compile._gib(limit)})", file=sys.stderr, flush=True)  # progress: each compile takes minutes
    return used

  fits = lambda size: size is not None and size <= limit
  top = upper // chips + 1
  low, high = 0, top  # per chip: `low` fits (0: none known), `high` does not (or is past `upper`)
  fitting, failing = {}, {}  # per-chip batch -> bytes per chip, where it compiled
  last_at_edge = False

  def probe(per_chip: int):
    nonlocal low, high
    used = resident(per_chip)
    if fits(used):
      low, fitting[per_chip] = per_chip, used
    else:
      high = per_chip
      if used is not None:
        failing[per_chip] = used

  start = max(1, min(config.train.batch_size // chips, top - 1))
  probe(start)
  if low == start and 2 * start < top:
    probe(2 * start)
  while high - low > 1:
    middle = (low + high) // 2
    guess = _line_guess(low, high, top, fitting, failing, limit)
    target = middle if guess is None else min(max(int(guess), low + 1), high - 1)
    at_edge = target in (low + 1, high - 1) and high - low > 2
    if at_edge and last_at_edge:  # the line keeps landing beside a known batch: halve instead
      target, at_edge = middle, False
    last_at_edge = at_edge
    probe(target)
  return {"batch": low * chips, "per_chip": low, "tried": dict(sorted(tried.items()))}
