"""A contextual read-out decoder (TEncDM, CoDAR): the sampler's final latents -> tokens, in context.

The built-in decoders round each position on its own (argmax of the tied read-out, nearest
embedding). This one, a small bidirectional transformer, reads the whole sequence of latents. It is
trained after the diffusion model, on that model's frozen embedding table E and read-out bias b.
Its inputs are clean latents with Gaussian noise at the diffusion's own noise levels near the end of
sampling (TEncDM trains its decoder on latents noised to t <= 0.15 of its schedule):

    y = z_t / gamma_t = x0 + (sigma_t / gamma_t) eps = x0 + exp(-lambda(t) / 2) eps,
    t ~ U[0, max_t] (one t per sequence), eps ~ N(0, I),

on the scale of x0, like the estimate x0_hat the sampler ends with, which is what it reads at
sampling time. Its logits are

    logits = (a y + net(y)) . E^T + b + b',

with a learned scalar a (starting at 1), a correction net(y) whose output layer starts at zero, and
a learned bias offset b' (starting at 0): untrained, it decodes exactly as the tied read-out
(`sample.decoder="readout"`), and training teaches it what the context adds. The loss is
cross-entropy at every position (PAD included: it also decodes where a sample ends).

`cdm-readout --workdir=DIR` trains it on the workdir's corpus from the newest
checkpoint's EMA parameters and writes `DIR/readout_decoder/` (parameters + `decoder.json`, with
its training FLOPs, which `experiments/compute_gap.py` adds to the diffusion budget when it samples
with it); `--set decoder=contextual` there, `--decoder=contextual` in `cdm-generate`, or
`cdm_jax.load(DIR).sample(..., decoder="contextual")` use it. Rerunning trains it again from
scratch (a few minutes; nothing to resume).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cdm_jax.models import builders
from cdm_jax.models.contextual_decoder import ContextualDecoder, ReadoutConfig, decoder_model_config
from cdm_jax.runtime import checkpointing, distributed, fs
from cdm_jax.sampling import generator
from cdm_jax.sampling.artifacts import DECODER_DIR
from cdm_jax.data import pipeline
from cdm_jax.training import fit, flops

Array = jax.Array


def noisy_inputs(x0: Array, log_snr: Array, eps: Array) -> Array:
  """The decoder's training input x0 + exp(-lambda / 2) eps (= z_t / gamma_t), for x0 and eps
  [batch, length, dim] and one log-SNR lambda per sequence [batch]."""
  return x0 + jnp.exp(-0.5 * log_snr)[:, None, None] * eps


def make_loss(decoder: ContextualDecoder, schedule, config: ReadoutConfig):
  """The `fit` loss `(params, (table, bias), tokens, key) -> (cross-entropy, {"accuracy"})`;
  tokens [batch, length] int; the table and bias stay frozen."""

  def loss_fn(params, frozen, tokens, key):
    table, bias = frozen
    t_key, eps_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (tokens.shape[0],), maxval=config.max_t)
    x0 = jnp.take(table, tokens, axis=0)
    y = noisy_inputs(x0, schedule.log_snr(t), jax.random.normal(eps_key, x0.shape))
    logits = decoder.apply(params, y, table, bias)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    return jnp.mean(nll), {"accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == tokens)}

  return loss_fn


def train(workdir: str, config: ReadoutConfig) -> dict:
  """Trains the decoder for `workdir`'s newest checkpoint and writes it (see the module doc);
  returns what `decoder.json` records."""
  sampler = generator.load(workdir)
  if builders.is_latent(sampler.config):
    raise ValueError(f"{workdir} holds a latent model (model.encoder='latent'): it decodes with "
                     "its autoencoder's contextual decoder already; the read-out decoder reads an "
                     "embedding table's latents.")
  model_config = builders.model_config(sampler.config)
  dec_config = decoder_model_config(model_config, config)
  decoder = ContextualDecoder(dec_config)
  table, bias = (jnp.asarray(distributed.to_host(a), jnp.float32) for a in
                 sampler.model.apply(sampler.params, method="readout_weights"))
  data = pipeline.prepare_data(sampler.config.data, workdir)
  init_key, key = jax.random.split(jax.random.PRNGKey(config.seed))
  params = decoder.init(init_key, jnp.zeros((1, dec_config.seq_len, dec_config.embed_dim)),
                        table, bias)
  tx = builders.adamw_cosine(peak_learning_rate=config.learning_rate,
                             warmup_steps=config.warmup_steps, total_steps=config.steps,
                             grad_clip_norm=1.0, weight_decay=0.0)
  rng = np.random.default_rng(config.seed)
  next_batch = lambda _: jnp.asarray(data.train[rng.integers(0, len(data.train),
                                                             config.batch_size)])
  params, fitted = fit.fit(make_loss(decoder, sampler.schedule, config), params, tx, next_batch,
                           num_steps=config.steps, key=key, frozen=(table, bias),
                           log_every_steps=max(1, config.steps // 10), desc="read-out decoder")
  path = fs.path(workdir) / DECODER_DIR
  checkpointing.save_tree(path / "params", params)
  meta = {"checkpoint_step": sampler.step, "train_seconds": fitted["train_seconds"],
          "flops": config.steps * flops.readout_decoder_train_flops(
              model_config, num_layers=config.num_layers, batch_size=config.batch_size),
          "metrics": fitted["history"], "config": dataclasses.asdict(config)}
  distributed.on_primary(lambda: fs.write_atomic(path / "decoder.json", json.dumps(meta, indent=2)),
                         f"writing {path}/decoder.json")
  return meta
