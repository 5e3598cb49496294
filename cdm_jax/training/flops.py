"""Analytic matmul FLOPs of a training step, for the diffusion model and the AR model of the same
transformer sizes: budgets counted this way do not move with the machine's noise."""

from cdm_jax.models import builders


def _per_token_layer(width: int, mlp_dim: int, length: int) -> int:
  """One transformer block's matmul FLOPs per token: QKV + output projections, the MLP, and the two
  attention products over `length` keys."""
  return 2 * (4 * width * width + 2 * width * mlp_dim) + 2 * 2 * length * width


def autoencoder_forward_flops(ae) -> dict:
  """One example's forward FLOPs through `models.autoencoder.TextAutoencoder` (an
  `AutoencoderConfig`): "encode" (embedding-free encoder, resampler, projection; with features="ar"
  the projection of the LM's states in), "decode", and "features": the frozen LM's forward
  (features="ar", no read-out; no backward ever runs through it) and "align", the decoder's
  regression head (training only)."""
  n, m, w, d = ae.seq_len, ae.num_latents, ae.width, ae.latent_dim
  features = feature_in = align = 0
  if ae.features == "ar":
    fw = ae.feature_width
    features = n * ae.feature_layers * _per_token_layer(fw, ae.feature_mlp_dim, n)
    feature_in = align = n * 2 * fw * w  # the projections of the LM's states in and back out
  resampler = (m * 2 * 2 * w * w + n * 2 * w * 2 * w + 2 * 2 * m * n * w
               + m * 2 * 2 * w * ae.mlp_dim)
  encode = (n * ae.encoder_layers * _per_token_layer(w, ae.mlp_dim, n)
            + n * 2 * w * w  # each query's projection of its k tokens' states
            + ae.resampler_layers * resampler + m * 2 * w * d + feature_in)
  decode = (n * 2 * d * w + n * ae.decoder_layers * _per_token_layer(w, ae.mlp_dim, n)
            + n * 2 * w * ae.vocab_size)
  return {"encode": encode, "decode": decode, "features": features, "align": align}


def autoencoder_train_flops(ae, batch_size: int) -> float:
  """Per optimizer step of the autoencoder stage: forward x3, and the frozen LM's forward once."""
  f = autoencoder_forward_flops(ae)
  return batch_size * (3 * (f["encode"] + f["decode"] + f["align"]) + f["features"])


def diffusion_train_flops(config) -> dict:
  """Per optimizer step of the diffusion config: "train" (forward x3 for forward + backward, plus
  the read-out terms and self-conditioning's extra forward on its share of batches; with a latent
  encoder its forward on the batch, and its decoder for the anchor term), "train_executed" (that
  plus the blocks' recomputed forward under model.remat), "metric_readout" (the accuracy
  metric's read-out) and "denoiser_forward". A latent encoder's own training is counted
  apart (`training.autoencoder.autoencoder_flops`)."""
  m, d = config.model, config.data
  batch = config.train.batch_size
  latent = m.get("encoder", "embedding") == "latent"
  length = d.seq_len // m.latent_ratio if latent else d.seq_len
  tokens = batch * length
  width = m.width
  in_dim = 2 * m.embed_dim if m.self_conditioning else m.embed_dim
  # a latent seq2seq model's source: as many latents again in the blocks, projected in, encoded
  context = length if builders.model_config(config).source_context else 0
  blocks = (batch * (length + context) * m.num_layers
            * _per_token_layer(width, m.mlp_dim, length + context))
  denoiser = (blocks
              + tokens * (2 * in_dim * width + 2 * width * m.embed_dim + 2 * 2 * width * width)
              + batch * context * 2 * m.embed_dim * width)
  readout = 2 * batch * d.seq_len * m.embed_dim * d.vocab_size
  encoder = 0
  if latent:
    ae = autoencoder_forward_flops(builders.autoencoder_config(config))
    encodes = 2 if context else 1
    readout, encoder = batch * ae["decode"], encodes * batch * (ae["encode"] + ae["features"])
  forward = denoiser + (readout if m.output.startswith("logits") else 0)
  train = 3 * forward + encoder
  if config.diffusion.rounding_weight:
    train += 3 * readout
  if config.diffusion.anchor_weight:
    train += 3 * readout
  if m.self_conditioning:
    train += config.diffusion.self_cond_prob * forward
  # model.remat recomputes the blocks' forward once more in the backward pass: executed, not
  # counted in budgets (which compare recipes, not memory settings).
  executed = train + (blocks if m.get("remat", False) else 0)
  return {"train": train, "train_executed": executed, "metric_readout": readout,
          "denoiser_forward": denoiser}


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
