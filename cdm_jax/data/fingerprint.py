"""The corpus fingerprint of a workdir: a different corpus under the same workdir is refused."""

import hashlib
import json
import logging

from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.runtime import config_record, fs

log = logging.getLogger(__name__)


FINGERPRINT_FILE = "data_fingerprint.json"


def check_fingerprint(examples: list, workdir: str, digest: str = "", count: int = 0):
  """Records a hash of the corpus in the workdir on first use; afterwards, a different corpus under
  the same workdir (edited file, other path, other max_examples) is an error, since its tokenizer,
  split and data position were made for the first one. `digest` and `count`: a prepared corpus's
  own (its examples are never held)."""
  digest = digest or hashlib.sha256(
      json.dumps(examples, ensure_ascii=False).encode("utf-8")).hexdigest()
  path = fs.path(workdir) / FINGERPRINT_FILE
  count = count or len(examples)
  record = {"sha256": digest, "examples": count}
  if path.is_file():
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved["sha256"] != digest and not config_record.has_checkpoint(workdir):
      log.warning("%s holds no checkpoint: the corpus record and tokenizer of a run that never "
                  "checkpointed are replaced.", workdir)
      tokenizer_file = fs.path(workdir) / tokenizer_lib.MODEL_FILE
      if tokenizer_file.exists():
        tokenizer_file.unlink()
    elif saved["sha256"] != digest:
      raise ValueError(
          f"The corpus differs from the one {workdir} was built on ({saved['examples']} examples "
          f"then, {count} now; sha256 {saved['sha256'][:12]} -> {digest[:12]}). Restore "
          "it, or train in a new workdir.")
    else:
      return
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.write_atomic(path, json.dumps(record))
  except OSError as err:  # a read-only workdir (e.g. evaluating someone else's run)
    log.warning("Could not record the corpus fingerprint in %s: %s", workdir, err)
