"""Analytic matmul FLOPs of a training step, for the diffusion model and the AR model of the same
transformer sizes: budgets counted this way do not move with the machine's noise."""


def _per_token_layer(width: int, mlp_dim: int, length: int) -> int:
  """One transformer block's matmul FLOPs per token: QKV + output projections, the MLP, and the two
  attention products over `length` keys."""
  return 2 * (4 * width * width + 2 * width * mlp_dim) + 2 * 2 * length * width


def diffusion_train_flops(config) -> dict:
  """Per optimizer step of the diffusion config: "train" (forward x3 for forward + backward, plus
  the read-out terms and self-conditioning's extra forward on its share of batches),
  "metric_readout" (the accuracy metric's read-out) and "denoiser_forward"."""
  m, d = config.model, config.data
  tokens = config.train.batch_size * d.seq_len
  width = m.width
  in_dim = 2 * m.embed_dim if m.self_conditioning else m.embed_dim
  denoiser = tokens * (m.num_layers * _per_token_layer(width, m.mlp_dim, d.seq_len)
                       + 2 * in_dim * width + 2 * width * m.embed_dim + 2 * 2 * width * width)
  readout = 2 * tokens * m.embed_dim * d.vocab_size
  forward = denoiser + (readout if m.output.startswith("logits") else 0)
  train = 3 * forward
  if config.diffusion.rounding_weight:
    train += 3 * readout
  if config.diffusion.anchor_weight:
    train += 3 * readout
  if m.self_conditioning:
    train += config.diffusion.self_cond_prob * forward
  return {"train": train, "metric_readout": readout, "denoiser_forward": denoiser}


def ar_train_flops(*, width: int, num_layers: int, mlp_dim: int, seq_len: int, vocab_size: int,
                   batch_size: int) -> float:
  """Per optimizer step of the causal LM (`models.TransformerLM`, tied read-out): forward x3."""
  tokens = batch_size * seq_len
  forward = tokens * (num_layers * _per_token_layer(width, mlp_dim, seq_len)
                      + 2 * width * vocab_size)
  return 3 * forward


def readout_decoder_train_flops(model_config, *, num_layers: int, batch_size: int) -> float:
  """Per optimizer step of `readout.ContextualDecoder` (the model's sizes, `num_layers` blocks):
  input and output projections, the blocks and the vocabulary read-out, forward x3."""
  m = model_config
  tokens = batch_size * m.seq_len
  forward = tokens * (num_layers * _per_token_layer(m.width, m.mlp_dim, m.seq_len)
                      + 2 * 2 * m.embed_dim * m.width + 2 * m.embed_dim * m.vocab_size)
  return 3 * forward
