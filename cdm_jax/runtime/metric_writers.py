"""Metrics to stdout (via logging), a JSONL file and TensorBoard event files (tensorboardX)."""

import json
import logging

import jax

from cdm_jax.runtime import fs

log = logging.getLogger(__name__)


class MetricWriter:
  """Writes scalars from process 0 only; `close()` flushes."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = fs.path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        if fs.is_remote(workdir):  # tensorboardX writes to buckets with the cloud client
          import google.cloud.storage  # pylint: disable=g-import-not-at-top,unused-import
      except ImportError as err:
        log.warning("No TensorBoard events (%s); metrics.jsonl has every scalar. pip install "
                    "tensorboardX, and the `gcs` extra for a gs:// workdir.", err)
        return
      try:
        self._tb = SummaryWriter(str(fs.path(workdir) / "tensorboard"))
      except Exception as err:  # pylint: disable=broad-except  (e.g. a bucket without its client)
        log.warning("No TensorBoard events in %s (%s: %s); metrics.jsonl has every scalar.",
                    workdir, type(err).__name__, err)

  def write_scalars(self, step: int, scalars: dict):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
    fs.append_line(self._jsonl, json.dumps({"step": step, **scalars}))
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, step)

  def write_texts(self, step: int, key: str, texts: list[str]):
    if self.enabled and self._tb is not None:
      self._tb.add_text(key, "\n\n".join(texts), step)

  def close(self):
    if self._tb is not None:
      self._tb.close()
