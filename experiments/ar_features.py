"""Trains (or finds cached) the library's causal LM on a config's corpus and tokenizer, and prints
the folder an AR-feature autoencoder reads (`autoencoder.features=ar`, `autoencoder.feature_model`).

The LM is the compute-gap ladder's model of the same sizes and steps (`evaluation.ar_model`, cached
under ~/.cache/cdm_jax/judges/), so a ladder rung already trained costs nothing here; its training
FLOPs still count in the autoencoder's (`training.autoencoder.autoencoder_flops`).

  python experiments/ar_features.py --config=configs/wordnet_latent.py --workdir=W --steps=156
  python -m cdm_jax.cli.train --config=configs/wordnet_latent.py --workdir=W \\
      --config.autoencoder.features=ar --config.autoencoder.feature_model=PRINTED_FOLDER
"""

import argparse

from cdm_jax.data import pipeline
from cdm_jax.evaluation import ar_model
from cdm_jax.runtime import config_files


def feature_model(config, workdir: str, steps: int) -> str:
  """The folder of the LM with the config's autoencoder.feature_* sizes, trained `steps` steps on
  the workdir's training split (made, with its tokenizer, if new)."""
  if steps < 1:
    raise ValueError(f"--steps must be >= 1, got {steps}.")
  ae = config.autoencoder
  sizes = argparse.Namespace(width=ae.feature_width, num_layers=ae.feature_layers,
                             num_heads=ae.feature_heads, mlp_dim=ae.feature_mlp_dim)
  data = pipeline.prepare_data(config.data, workdir)
  lm = ar_model.get_judge(data.tokenizer, data.train, ar_model.gap_corpus_id(config.data),
                          ar_model.sized_like(sizes, max_steps=steps))
  return lm.info["cache"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="a latent config file (get_config())")
  parser.add_argument("--workdir", required=True, help="the run's workdir (its tokenizer)")
  parser.add_argument("--steps", type=int, default=156, help="the LM's training steps")
  args = parser.parse_args()
  config = config_files.load(args.config)
  if "autoencoder" not in config:
    raise SystemExit(f"{args.config} has no autoencoder block (a latent config is needed).")
  print(feature_model(config, args.workdir, args.steps))


if __name__ == "__main__":
  main()
