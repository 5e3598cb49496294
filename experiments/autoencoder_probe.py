"""How fast a small text autoencoder learns to reconstruct, on synthetic sequences: a cheap probe of
the autoencoder's settings (seconds per variant on a CPU) before spending a WordNet run on them.

Sequences are BOS, 2-11 words drawn uniformly from 18, EOS, PAD to 16 (vocabulary 32, the tiny
configs' sizes); the autoencoder has width 32, one layer each for encoder, resampler and decoder.
Each variant trains `--steps` AdamW steps (peak 3e-3, batch 16) and reports its held-out token
accuracy (non-PAD) on 256 fresh sequences without augmentation.

  python experiments/autoencoder_probe.py --variant defaults= \\
      --variant cosmos=mask_rate=0.3,noise_delta=0.7,latent_dropout=0.4 \\
      --variant none=noise_delta=1 [--set ratio=4 --set latent_dim=16 --steps=300]
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cdm_jax.core import vocab_ops
from cdm_jax.models import builders
from cdm_jax.models.autoencoder import AutoencoderConfig, TextAutoencoder, augmentation_draws
from cdm_jax.runtime import overrides as overrides_lib

BASE = AutoencoderConfig(vocab_size=32, seq_len=16, latent_dim=16, ratio=4, width=32,
                         num_heads=2, mlp_dim=64, encoder_layers=1, resampler_layers=1,
                         decoder_layers=1)


def synthetic_rows(rng: np.random.Generator, count: int, seq_len: int = 16) -> np.ndarray:
  rows = np.zeros((count, seq_len), np.int32)
  for i in range(count):
    length = rng.integers(2, 12)
    rows[i, 0] = 2
    rows[i, 1:length + 1] = rng.integers(4, 22, length)
    rows[i, length + 1] = 3
  return rows


def held_out_accuracy(config: AutoencoderConfig, steps: int, seed: int = 0) -> float:
  rng = np.random.default_rng(seed)
  model = TextAutoencoder(config)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, config.seq_len), jnp.int32))
  tx = builders.adamw_cosine(peak_learning_rate=3e-3, warmup_steps=20, total_steps=steps,
                             grad_clip_norm=1.0, weight_decay=0.0)
  opt_state = tx.init(params)

  def loss_fn(p, tokens, key):
    logits = model.apply(p, tokens, augmentation_draws(key, tokens.shape[0], config))
    return jnp.mean(vocab_ops.token_cross_entropy(logits, tokens))

  @jax.jit
  def step(p, o, tokens, key):
    grads = jax.grad(loss_fn)(p, tokens, key)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o

  for i in range(steps):
    params, opt_state = step(params, opt_state, jnp.asarray(synthetic_rows(rng, 16)),
                             jax.random.PRNGKey(i))
  rows = synthetic_rows(rng, 256)
  predicted = np.asarray(jnp.argmax(model.apply(params, jnp.asarray(rows)), -1))
  content = rows != 0
  return float(((predicted == rows) & content).sum() / content.sum())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", action="append", default=[],
                      help="NAME=FIELD=VALUE,FIELD=VALUE (AutoencoderConfig fields); repeatable")
  parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE for every variant")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seeds", default="0,1")
  args = parser.parse_args()
  base = dataclasses.replace(BASE, **overrides_lib.dataclass_overrides(BASE, args.set))
  for variant in args.variant or ["base="]:
    name, _, settings = variant.partition("=")
    fields = [s for s in settings.split(",") if s]
    config = dataclasses.replace(base, **overrides_lib.dataclass_overrides(base, fields))
    accuracies = [held_out_accuracy(config, args.steps, int(s)) for s in args.seeds.split(",")]
    print(f"{name:<12} held-out token accuracy {', '.join(f'{a:.3f}' for a in accuracies)} "
          f"(seeds {args.seeds}, {args.steps} steps, k={config.ratio}, d={config.latent_dim}, "
          f"mask {config.mask_rate}, delta {config.noise_delta}, dropout {config.latent_dropout})")


if __name__ == "__main__":
  main()
