"""Metrics to stdout (via logging), a JSONL file and TensorBoard event files (tensorboardX)."""

import json
import logging
import pathlib

import jax

log = logging.getLogger(__name__)


class MetricWriter:
  """Writes scalars from process 0 only; `close()` flushes."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = None
    if self.enabled:
      path = pathlib.Path(workdir)
      self._jsonl = open(path / "metrics.jsonl", "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(path / "tensorboard"))
      except ImportError:
        log.warning("tensorboardX is not installed: no TensorBoard events.")

  def write_scalars(self, step: int, scalars: dict):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, step)

  def write_texts(self, step: int, key: str, texts: list[str]):
    if self.enabled and self._tb is not None:
      self._tb.add_text(key, "\n\n".join(texts), step)

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
