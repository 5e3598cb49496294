"""Does a trained denoiser use its context? `context_accuracy`: read-out accuracy of x0_hat with the
true context against a foreign one, beside the decoder alone on the noisy latents, rounding with no
network and position 0 (`experiments/context_use.py` prints it for a workdir; docs/results.md)."""

import jax
import jax.numpy as jnp

from cdm_jax.core import diffusion
from cdm_jax.data import tokenizer as tokenizer_lib


def context_accuracy(generator, tokens, times, seed: int = 0) -> list[dict]:
  """Rows per t: token accuracy of the decoded x0_hat with the own and with a foreign context,
  of the decoder alone on the rescaled noisy latents (x_t / gamma_t), of the no-network rounding
  (embedding tables only) and at position 0. Works over any encoder: with a latent one (m = n / k)
  the foreign context replaces every *other latent*, and a latent's accuracy is that of its k
  tokens."""
  model, params, schedule = generator.model, generator.params, generator.schedule
  latent = model.config.is_latent
  x0 = model.apply(params, tokens, method="embed")  # [batch, m, d]
  batch, m, dim = x0.shape
  k = tokens.shape[1] // m
  non_pad = tokens != tokenizer_lib.PAD_ID

  def read(x0_hat):  # [batch, n] bool
    return jnp.argmax(model.apply(params, x0_hat, method="decode_logits"), axis=-1) == tokens

  def accuracy(correct):
    return jnp.sum(correct & non_pad) / jnp.sum(non_pad)

  @jax.jit
  def at_time(t, key):
    t_pos = schedule.position_times(jnp.full((batch,), t), m)
    x_t = diffusion.q_sample(x0, t_pos, jax.random.normal(key, (batch, m, dim)), schedule)
    log_snr = schedule.log_snr(t_pos)
    denoise = lambda x: model.apply(params, x, log_snr, method="denoise").x0_hat
    own_x0 = denoise(x_t)
    own = accuracy(read(own_x0))
    first = jnp.mean(read(own_x0)[:, 0])  # position 0 is always BOS: does the net know where it is?
    gamma = jnp.reshape(schedule.gamma(t_pos), (batch, -1, 1))  # [batch] or [batch, m]
    decoder_alone = accuracy(read(x_t / gamma))
    no_network = jnp.nan
    if not latent:
      table = model.apply(params, method="embeddings")
      likelihood = gamma * (x_t @ table.T) - 0.5 * gamma**2 * jnp.sum(table**2, axis=-1)
      no_network = accuracy(jnp.argmax(likelihood, axis=-1) == tokens)
    foreign = jnp.roll(x_t, 1, axis=0)

    def keep_one(position):  # the tokens of latent `position`, every other latent from elsewhere
      mixed = jnp.where((jnp.arange(m) == position)[None, :, None], x_t, foreign)
      return jax.lax.dynamic_slice_in_dim(read(denoise(mixed)), position * k, k, axis=1)

    alone = jax.lax.map(keep_one, jnp.arange(m))  # [m, batch, k]
    alone = accuracy(jnp.transpose(alone, (1, 0, 2)).reshape(batch, -1))
    return own, alone, no_network, decoder_alone, first

  rows = []
  for i, t in enumerate(times):
    own, alone, no_network, decoder_alone, first = at_time(jnp.float32(t),
                                                           jax.random.PRNGKey(seed + i))
    rows.append({"t": t, "log_snr": float(schedule.log_snr(jnp.float32(t))),
                 "accuracy_own_context": float(own), "accuracy_foreign_context": float(alone),
                 "accuracy_no_network": float(no_network),
                 "accuracy_decoder_on_noisy": float(decoder_alone),
                 "accuracy_position_0": float(first)})
  return rows
