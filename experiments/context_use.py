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

import jax.numpy as jnp

import cdm_jax
from cdm_jax.data import corpora, encoding, packing
from cdm_jax.evaluation.context_use import context_accuracy


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_examples", type=int, default=128)
  parser.add_argument("--times", default="0.5,0.7,0.8,0.85,0.9,0.95")
  args = parser.parse_args()
  generator = cdm_jax.load(args.workdir)
  data = generator.config.data
  _, valid = encoding.split_examples(corpora.read_corpus(data.corpus, data.path, data.field),
                                     data.valid_percent)
  tokens, _ = encoding.encode(generator.tokenizer, valid[:4 * args.num_examples], data.seq_len,
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
