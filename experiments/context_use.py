"""Does a trained denoiser use its context? Read-out accuracy of x0_hat with the true context
against a foreign one.

For held-out sequences noised to time t, every position is decoded (tied read-out argmax of
x0_hat) twice: once from the sequence's own noisy latents, once with every *other* position's
latent taken from a different sequence (the next in the batch) at the same noise level. A
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
from cdm_jax.data import corpora, pipeline, tokenizer as tokenizer_lib


def context_accuracy(generator, tokens, times, seed: int = 0) -> list[dict]:
  model, params, schedule = generator.model, generator.params, generator.schedule
  table, bias = model.apply(params, method="readout_weights")
  batch, length = tokens.shape
  non_pad = tokens != tokenizer_lib.PAD_ID

  def read(x0_hat):
    return jnp.argmax(x0_hat @ table.T + (0.0 if bias is None else bias), axis=-1) == tokens

  def accuracy(x0_hat):
    return jnp.sum(read(x0_hat) & non_pad) / jnp.sum(non_pad)

  @jax.jit
  def at_time(t, key):
    t_pos = schedule.position_times(jnp.full((batch,), t), length)
    x_t = diffusion.q_sample(table[tokens], t_pos, jax.random.normal(key, (batch, length, table.shape[1])),
                             schedule)
    log_snr = schedule.log_snr(t_pos)
    denoise = lambda x: model.apply(params, x, log_snr, method="denoise").x0_hat
    own_x0 = denoise(x_t)
    own = accuracy(own_x0)
    first = jnp.mean(read(own_x0)[:, 0])  # position 0 is always BOS: does the net know where it is?
    gamma = jnp.reshape(schedule.gamma(t_pos), (batch, -1, 1))  # [batch] or [batch, length]
    likelihood = gamma * (x_t @ table.T) - 0.5 * gamma**2 * jnp.sum(table**2, axis=-1)
    no_network = jnp.sum((jnp.argmax(likelihood, axis=-1) == tokens) & non_pad) / jnp.sum(non_pad)
    foreign = jnp.roll(x_t, 1, axis=0)

    def keep_one(position):  # x0_hat at `position`, every other position from another sequence
      mixed = jnp.where((jnp.arange(length) == position)[None, :, None], x_t, foreign)
      return denoise(mixed)[:, position]

    alone = accuracy(jnp.swapaxes(jax.lax.map(keep_one, jnp.arange(length)), 0, 1))
    return own, alone, no_network, first

  rows = []
  for i, t in enumerate(times):
    own, alone, no_network, first = at_time(jnp.float32(t), jax.random.PRNGKey(seed + i))
    rows.append({"t": t, "log_snr": float(schedule.log_snr(jnp.float32(t))),
                 "accuracy_own_context": float(own), "accuracy_foreign_context": float(alone),
                 "accuracy_no_network": float(no_network), "accuracy_position_0": float(first)})
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
    tokens = pipeline.pack(tokens)
  if len(tokens) < 2:
    raise SystemExit("Need at least two held-out sequences.")
  rows = context_accuracy(generator, jnp.asarray(tokens[:args.num_examples]),
                          [float(t) for t in args.times.split(",")])
  print(f"{'t':>5} {'log-SNR':>8} {'own context':>12} {'foreign context':>16} {'no network':>11} {'position 0':>11}")
  for r in rows:
    print(f"{r['t']:>5} {r['log_snr']:>8.2f} {r['accuracy_own_context']:>12.3f} "
          f"{r['accuracy_foreign_context']:>16.3f} {r['accuracy_no_network']:>11.3f} "
          f"{r['accuracy_position_0']:>11.3f}")
  print(json.dumps({"workdir": args.workdir, "step": generator.step, "rows": rows}))


if __name__ == "__main__":
  main()
