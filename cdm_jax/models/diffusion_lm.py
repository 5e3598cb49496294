"""The encoders (the embedding table; the text autoencoder of `models.autoencoder`) and the
diffusion LM that ties one to the denoiser."""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from cdm_jax.core import parameterization
from cdm_jax.models.config import ModelConfig
from cdm_jax.models.partitioning import logical
from cdm_jax.core.parameterization import expand_like
from cdm_jax.models.autoencoder import AutoencoderConfig, TextAutoencoder
from cdm_jax.models.transformer import TransformerDenoiser

Array = jax.Array
# Where a scanned stack's parameters (layer axis first) sit in DiffusionLM's parameter tree.
SCANNED_LAYERS = ("params", "denoiser", "stack", "layers")


@flax.struct.dataclass
class DenoiserOutput:
  x0_hat: Array            # [batch, length, embed_dim], the estimate of the clean latents
  raw: Array               # [batch, length, embed_dim or vocab], the network's own target (x0/eps/v/logits)
  logits: Array | None     # [batch, length, vocab] when the model predicts logits, else None


class Embedder(nn.Module):
  """Embedding table E [vocab, dim], optionally L2-normalized, with a tied read-out."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    table_init = logical(nn.initializers.normal(cfg.embed_scale), "vocab", "latent")
    self.table = self.param("table", table_init, (cfg.vocab_size, cfg.embed_dim))
    self.readout_bias = self.param("readout_bias", logical(nn.initializers.zeros, "vocab"),
                                   (cfg.vocab_size,))

  def embeddings(self) -> Array:
    """The table as used everywhere (normalized to norm embed_scale * sqrt(dim) if configured)."""
    cfg = self.config
    table = self.table
    if cfg.normalize_embeddings:
      norm = jnp.linalg.norm(table, axis=-1, keepdims=True)
      table = table / jnp.maximum(norm, 1e-6) * (cfg.embed_scale * cfg.embed_dim**0.5)
    return table

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embeddings(), tokens, axis=0)  # [batch, length, dim]

  def readout(self, x: Array) -> Array:
    """Tied read-out logits `x . E^T + b`, [..., vocab]: ranks by dot product, not L2 distance."""
    flat = x.reshape(-1, x.shape[-1])  # as rows: a plain matmul in the backward too (see `rows`)
    return (flat @ self.embeddings().T + self.readout_bias).reshape(x.shape[:-1] + (-1,))


class LatentEncoder(nn.Module):
  """The frozen text autoencoder as the diffusion's E and D: E(w) the standardized latents
  [batch, m, d] (no gradient), D(x) the token logits [batch, n, vocab]. Its parameters live in the
  diffusion model's tree (under "embedder"), loaded from the autoencoder stage and never updated
  (`builders.make_model_optimizer` freezes them)."""
  config: AutoencoderConfig

  def setup(self):
    self.autoencoder = TextAutoencoder(self.config)

  def __call__(self, tokens: Array) -> Array:
    ae = self.autoencoder
    return jax.lax.stop_gradient(ae.standardize(ae.encode(tokens)))

  def decode_logits(self, x: Array) -> Array:
    return self.autoencoder.decode(self.autoencoder.unstandardize(x))


class DiffusionLM(nn.Module):
  """Encoder + denoiser. Entry points via `apply(..., method=...)`: embed (E), decode_logits (D's
  logits), denoise, and for the embedding table embeddings, readout, readout_weights; `__call__`
  touches all of them (for init). `autoencoder` is set with `config.encoder == "latent"`."""
  config: ModelConfig
  autoencoder: AutoencoderConfig | None = None

  def setup(self):
    cfg = self.config
    if cfg.is_latent:
      if self.autoencoder is None:
        raise ValueError("model.encoder='latent' needs the autoencoder's config.")
      self.embedder = LatentEncoder(self.autoencoder)
    else:
      self.embedder = Embedder(cfg)
    # The denoiser runs over m latents (its position table has m rows).
    self.denoiser = TransformerDenoiser(dataclasses.replace(cfg, seq_len=cfg.latent_length,
                                                            latent_ratio=1),
                                        out_dim=cfg.embed_dim)

  def embed(self, tokens):
    return self.embedder(tokens)

  def decode_logits(self, x):
    """Token logits [batch, n, vocab] of latents x [batch, m, d]: D, or the tied read-out."""
    if self.config.is_latent:
      return self.embedder.decode_logits(x)
    return self.embedder.readout(x)

  def embeddings(self):
    self._require_table("the embedding table")
    return self.embedder.embeddings()

  def readout(self, x):
    self._require_table("the tied read-out")
    return self.embedder.readout(x)

  def readout_weights(self):
    """(E [vocab, dim] as used, read-out bias [vocab]): what decoders and clamps need."""
    self._require_table("an embedding table's read-out (clamps, rounding, nearest decoders)")
    return self.embedder.embeddings(), self.embedder.readout_bias

  def _require_table(self, what: str):
    if self.config.is_latent:
      raise ValueError(f"{what} exists only for model.encoder='embedding'; this model diffuses "
                       "the text autoencoder's latents (decode them with decode_logits).")

  def denoise(self, x_t, log_snr, x0_selfcond=None, *, cond=None, cond_mask=None, mask=None,
              context=None, train: bool = False) -> DenoiserOutput:
    """x0_hat (and the network's raw output) for x_t [batch, length, dim] at log-SNR [batch] or
    [batch, length]; the output's meaning is `parameterization.get(config.output)`. `context`:
    a `source_context` model's source latents (`embed` of source rows; None: the null source)."""
    cfg = self.config
    raw = self.denoiser(x_t, log_snr, x0_selfcond, cond=cond, cond_mask=cond_mask, mask=mask,
                        context=context, train=train)
    param = parameterization.get(cfg.output)
    logits = None
    if param.predicts_logits:  # CDCD score interpolation: the expected embedding under the logits
      if param.output_prior:  # read out together with the network's output: one vocabulary matmul
        raw = raw + parameterization.prior_shift(x_t, log_snr)
      logits = raw = self.embedder.readout(raw)
      probs = jax.nn.softmax(logits, axis=-1)
      x0_hat = (probs.reshape(-1, probs.shape[-1]) @ self.embeddings()).reshape(x_t.shape)
    else:
      log_snr = expand_like(log_snr, x_t)
      gamma, sigma = jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))
      x0_hat = param.to_x0(raw, x_t, gamma, sigma)
    if cond is not None:
      x0_hat = jnp.where(cond_mask[..., None], cond, x0_hat)
    return DenoiserOutput(x0_hat=x0_hat, raw=raw, logits=logits)

  def __call__(self, tokens, log_snr, train: bool = False):
    x0 = self.embed(tokens)
    out = self.denoise(x0, log_snr, x0, train=train)
    return self.decode_logits(out.x0_hat)
