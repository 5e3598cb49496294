"""Does a trained denoiser use its context? Read-out accuracy of x0_hat with the true context
against a foreign one.

For held-out sequences noised to time t, every position is decoded (the model's decoder: the tied
read-out, or a latent encoder's D; argmax of its logits on x0_hat) twice: once from the sequence's
own noisy latents, once with every *other* latent taken from a different sequence (the next in the
batch) at the same noise level. "decoder alone" decodes x_t / gamma_t with no denoiser: where the
decoder stops reading the noisy latents by itself (the ambiguous band). A
denoiser that only looks at its own position scores the same on both; the gap is what the
context buys. Beside them, the accuracy of rounding with no network at all (the Gaussian
likelihood's argmax, argmax_w gamma z.e_w - gamma^2 |e_w|^2 / 2, a uniform prior over tokens): where
it is near 1 a token is read off its own latent and denoising teaches no context; where it is near
0 nothing of the token is left. Training should spend its time between. And the accuracy at
position 0, which always holds BOS: a denoiser that knows where it is reads it at any noise level.
With a position-skewed schedule, t is the global time. A model trained on packed windows
(`data.packing`) is read on packed held-out windows, as it never saw PAD.

  python experiments/context_use.py --workdir=workdirs/wordnet
"""

import argparse
import json

import jax
import jax.numpy as jnp

import cdm_jax
from cdm_jax.core import diffusion
from cdm_jax.data import corpora, packing, pipeline, tokenizer as tokenizer_lib


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_examples", type=int, default=128)
  parser.add_argument("--times", default="0.5,0.7,0.8,0.85,0.9,0.95")
  args = parser.parse_args()
  generator = cdm_jax.load(args.workdir)
  data = generator.config.data
  _, valid = pipeline.split_examples(corpora.read_corpus(data.corpus, data.path, data.field),
                                     data.valid_percent)
  tokens, _ = pipeline.encode(generator.tokenizer, valid[:4 * args.num_examples], data.seq_len,
                              data.long_lines, name="valid")
  if data.get("packing", False):  # as the model was trained: windows of whole examples, no PAD
    tokens = packing.pack(tokens)
  if len(tokens) < 2:
    raise SystemExit("Need at least two held-out sequences.")
  rows = context_accuracy(generator, jnp.asarray(tokens[:args.num_examples]),
                          [float(t) for t in args.times.split(",")])
  print(f"{'t':>5} {'log-SNR':>8} {'own context':>12} {'foreign context':>16} {'no network':>11} "
        f"{'decoder alone':>14} {'position 0':>11}")
  for r in rows:
    print(f"{r['t']:>5} {r['log_snr']:>8.2f} {r['accuracy_own_context']:>12.3f} "
          f"{r['accuracy_foreign_context']:>16.3f} {r['accuracy_no_network']:>11.3f} "
          f"{r['accuracy_decoder_on_noisy']:>14.3f} {r['accuracy_position_0']:>11.3f}")
  print(json.dumps({"workdir": args.workdir, "step": generator.step, "rows": rows}))


if __name__ == "__main__":
  main()
