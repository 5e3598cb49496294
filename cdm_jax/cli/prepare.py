"""`cdm-prepare --config=configs/X.py --output=FOLDER [--config.data.a=b]`: reads the config's
corpus once into token shards (`cdm_jax.data.prepare`); then train with
`--config.data.prepared=FOLDER`. Prints the manifest's counts as JSON.
`cdm-prepare --verify=FOLDER` checks a prepared folder's every shard (checksums, token ids)."""

import json
import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from cdm_jax.cli import common
from cdm_jax.data import prepare, shards


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()); its "
                                  "`data` block names the corpus, tokenizer and seq_len.",
                                  lock_config=True)
  flags.DEFINE_string("output", None, "The prepared folder (local or mounted disk).")
  flags.DEFINE_integer("tokenizer_sample", 200_000, "Training examples the tokenizer is trained "
                       "on: the first ones of the corpus; bounds that step's memory and time.")
  flags.DEFINE_integer("shard_tokens", 1 << 24, "Tokens per shard file.")
  flags.DEFINE_string("verify", None, "Check a prepared folder instead: every shard's checksum, "
                      "token ids and offsets (prints its counts; a damaged shard is one error "
                      "line).")


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  pylogging.getLogger("cdm_jax").setLevel(pylogging.INFO)
  values = flags.FLAGS
  if values.verify:
    print(json.dumps(shards.verify_folder(values.verify)))
    return
  if values.config is None or not values.output:
    raise ValueError("cdm-prepare needs --config and --output (or --verify=FOLDER).")
  try:
    config = values.config
    config.get("seed")
  except OSError as err:
    raise ValueError(f"--config could not be loaded: {str(err).splitlines()[-1].strip()}") from None
  manifest = prepare.prepare(config.data, values.output, tokenizer_sample=values.tokenizer_sample,
                             shard_tokens=values.shard_tokens)
  print(json.dumps({key: manifest.get(key, 0) for key in ("read", "truncated", "dropped", "split")} | {
      split: {k: v for k, v in part.items() if k != "shards"}
      for split, part in manifest["splits"].items()}))


def main(argv=None):
  _define_flags()
  common.run_main(_run, argv)


if __name__ == "__main__":
  main()
