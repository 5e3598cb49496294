"""Forward noising, training losses, self-conditioning and the likelihood bound (pure functions).

Losses return *sums* and token counts so that metrics stay exact under padding and across devices;
the value differentiated is normalised by a data-independent constant (positions in the batch), so
averaging gradients over devices equals the gradient of the global batch.
"""

import dataclasses
import math

import flax
import jax
import jax.numpy as jnp

from cdm_jax.core import conditioning
from cdm_jax.core import parameterization
from cdm_jax.runtime import registry
from cdm_jax.core import schedules as schedules_lib
from cdm_jax.core import vocab_ops
from cdm_jax.core.parameterization import expand_like
from cdm_jax.core.tokens import PAD_ID

Array = jax.Array

# metric -> the summed count it averages over (`steps.summarize_metrics` divides once per log)
METRIC_DENOMINATORS = {"loss": "positions", "diffusion_loss": "tokens",
                       "rounding_loss": "readout_tokens", "anchor_loss": "readout_tokens",
                       "token_accuracy": "accuracy_tokens"}


def q_sample(x0: Array, t: Array, noise: Array, schedule: schedules_lib.Schedule) -> Array:
  """x_t = gamma(t) x0 + sigma(t) noise; x0 [batch, m, d], t [batch], noise like x0."""
  gamma, sigma = schedule.alpha_sigma(t)
  return expand_like(gamma, x0) * x0 + expand_like(sigma, x0) * noise


@dataclasses.dataclass(frozen=True)
class LossConfig:
  rounding_weight: float = 1.0    # -log p(w | z_tmin) through the tied read-out (anti-collapse)
  anchor_weight: float = 0.0      # cross-entropy of the read-out of x0_hat (anti-collapse)
  mask_padding: bool = False      # True: PAD positions carry no loss; False: the model learns PAD
  self_cond_prob: float = 0.5     # probability that a batch trains with self-conditioning
  time_warp: bool = False         # draw t from the learned warping instead of uniformly
  importance_weight: bool = True  # with time_warp: weight by 1/p(t) so the objective is unbiased
  warp_follow: str = "loss"       # with time_warp: "loss" (density ~ loss) | "slope" (CDCD)
  accuracy_examples: int = 8      # examples per (local) batch on which token accuracy is measured
  condition: conditioning.ConditionConfig = conditioning.ConditionConfig()  # known-position mixture

  def __post_init__(self):
    if self.warp_follow not in schedules_lib.WARP_FOLLOWS:
      raise ValueError(f"diffusion.warp_follow={self.warp_follow!r}: expected one of "
                       f"{schedules_lib.WARP_FOLLOWS}.")

  @classmethod
  def from_dict(cls, values: dict):
    return registry.dataclass_from_dict(cls, values, "loss config")


def sample_times(u0: Array, example_index: Array, global_batch: int,
                 warp: schedules_lib.TimeWarp | None, follow: str = "loss") -> tuple[Array, Array]:
  """Training times [batch] (low-discrepancy, optionally warped) and importance weights [batch]."""
  u = schedules_lib.low_discrepancy_uniform(u0, example_index, global_batch)
  if warp is None:
    return u, jnp.ones_like(u)
  return warp.inverse_cdf(u, follow)


@flax.struct.dataclass
class LossInputs:
  """One (local) batch and its randomness, as the loss takes them."""
  tokens: Array     # [batch, length] int
  mask: Array       # [batch, length] bool, True on non-PAD positions
  t: Array          # [batch] diffusion times (per position through the schedule's position_skew)
  weight: Array     # [batch] importance weights of t (used with time warping)
  noise: Array      # [2, batch, length, dim] standard normals: the diffusion's, the rounding term's
  self_cond: Array  # scalar bool: whether this batch trains with self-conditioning
  known: Array | None = None      # [batch, length] bool: positions given as the condition
  null_cond: Array | None = None  # [batch] bool: examples whose known latents are zeroed (CFG)


def training_losses(model, params, inputs: LossInputs, schedule: schedules_lib.Schedule,
                    config: LossConfig, *, rngs: dict | None = None, train: bool = True):
  """The denoising loss of one (local) batch for a `DiffusionLM` and its variables `params`.

  The diffusion runs over the encoder's m latents (m = n for the embedding table; every latent
  carries loss with a latent encoder, whose latents are not tied to positions); the read-out
  terms, the accuracy metric and PAD masking are over the n tokens, through the model's decoder.
  Returns (loss_sum, (metrics, per_example_loss)): `loss_sum` summed over examples (divide by a
  constant before differentiating); metric sums whose denominators `METRIC_DENOMINATORS` names;
  `per_example_loss` [batch] per latent, for fitting the time warp.
  """
  cfg = model.config
  apply = lambda method, *args, **kw: model.apply(params, *args, method=method, rngs=rngs, **kw)
  cond = {}
  if cfg.source_context:  # from here on, the rows are the targets
    inputs, cond = source_in_context(apply, inputs, cfg.context_layout, cfg.null_context)
  x0 = apply("embed", inputs.tokens)  # [batch, m, dim]
  t_pos = schedule.position_times(inputs.t, x0.shape[1])  # [batch] or [batch, m]
  x_t = q_sample(x0, t_pos, inputs.noise[0], schedule)
  token_mask = inputs.mask if config.mask_padding else jnp.ones_like(inputs.mask)
  loss_mask = jnp.ones(x0.shape[:2], bool) if cfg.is_latent else token_mask
  if inputs.known is not None:  # known positions carry their clean latents and no loss
    loss_mask = token_mask = loss_mask & ~inputs.known
    cond = {"cond": jnp.where(inputs.null_cond[:, None, None], 0.0, x0), "cond_mask": inputs.known}
  loss_mask, token_mask = loss_mask.astype(jnp.float32), token_mask.astype(jnp.float32)
  out = _denoise(apply, x_t, schedule.log_snr(t_pos), inputs.self_cond, cfg.self_conditioning,
                 train, cond)
  per_latent = _denoising_loss(cfg.output, out, x0, inputs, schedule.alpha_sigma(t_pos))
  per_example = jnp.sum(per_latent * loss_mask, axis=-1)  # [batch]
  weighted = per_example * inputs.weight if config.time_warp and config.importance_weight else per_example
  loss_sum = jnp.sum(weighted)
  metrics = {"diffusion_loss": jnp.sum(per_example), "tokens": jnp.sum(loss_mask),
             "readout_tokens": jnp.sum(token_mask),
             "positions": jnp.asarray(loss_mask.size, jnp.float32)}
  for name, weight, value in _readout_terms(apply, cfg, config, x0, out, inputs, schedule):
    value = jnp.sum(value * token_mask)
    loss_sum += weight * value
    metrics[name] = value
  metrics.update(_accuracy(apply, cfg, out.x0_hat, inputs.tokens, token_mask,
                           config.accuracy_examples))
  metrics["loss"] = loss_sum
  # Per-latent normalisation (by positions) keeps the warp independent of the padding share.
  per_example_loss = per_example / jnp.maximum(jnp.sum(loss_mask, axis=-1), 1.0)
  return loss_sum, (metrics, per_example_loss)


def source_in_context(apply, inputs: LossInputs, layout: str = "pairs",
                      null_context: str = "zeros") -> tuple[LossInputs, dict]:
  """A `source_context` model's batch: (the inputs with the diffused rows as tokens, {"context":
  the context rows' latents}), by `conditioning.context_rows`: for "pairs" the target and source
  rows of `BOS source EOS target EOS` rows; for "positions" the whole rows and the rows with their
  unknown positions PAD. An example drawn with nothing known, or with the null condition, has the
  null context (`context_latents`), as classifier-free guidance contrasts with; every diffused
  latent carries loss."""
  source, target = conditioning.context_rows(inputs.tokens, inputs.known, layout)
  context = context_latents(lambda rows: apply("embed", rows), source, inputs.known,
                            inputs.null_cond, null_context)
  inputs = inputs.replace(tokens=target, mask=target != PAD_ID, known=None,
                          null_cond=None)
  return inputs, {"context": context}


def context_latents(embed, source: Array, known: Array, null_cond: Array | None,
                    null_context: str = "zeros") -> Array:
  """[batch, m, d] the context latents `embed(source)` of a source-context model's rows; zeros for
  a row with nothing known, and for a dropped condition (`null_cond`) zeros, or with
  `null_context="length"` the latents of its `conditioning.blank_known` row."""
  null = ~jnp.any(known, axis=-1)
  if null_cond is not None and null_context == "length":
    source = jnp.where(null_cond[:, None], conditioning.blank_known(source), source)
  elif null_cond is not None:
    null = null | null_cond
  return jnp.where(null[:, None, None], 0.0, embed(source))


def _denoise(apply, x_t, log_snr, self_cond, self_conditioning: bool, train: bool, cond: dict):
  """The denoiser's output; with self-conditioning on and `self_cond` true, its input is a first,
  gradient-stopped estimate of x0 (zeros otherwise). `cond`: the `cond`/`cond_mask` keywords."""
  zeros = jnp.zeros_like(x_t)
  x0_selfcond = zeros
  if self_conditioning:
    x0_selfcond = jax.lax.cond(
        self_cond,
        lambda: jax.lax.stop_gradient(apply("denoise", x_t, log_snr, zeros, train=train, **cond).x0_hat),
        lambda: zeros)
  return apply("denoise", x_t, log_snr, x0_selfcond, train=train, **cond)


def _denoising_loss(output: str, out, x0, inputs: LossInputs, alpha_sigma) -> Array:
  """Per latent [batch, m]: cross-entropy on logits, or the MSE against the parameterization's
  target."""
  param = parameterization.get(output)
  if param.predicts_logits:
    return vocab_ops.token_cross_entropy(out.logits, inputs.tokens)
  gamma, sigma = (expand_like(v, x0) for v in alpha_sigma)
  target = param.target(x0, inputs.noise[0], gamma, sigma)
  return jnp.mean(jnp.square(out.raw - target), axis=-1)


def decoder_cross_entropy(apply, cfg, x: Array, tokens: Array) -> Array:
  """Per token [batch, n]: -log p(w | x) through the model's decoder: the tied read-out (in row
  blocks, in the model's matmul precision) or a latent encoder's D."""
  if cfg.is_latent:
    return vocab_ops.token_cross_entropy(apply("decode_logits", x), tokens)
  return vocab_ops.readout_cross_entropy(x, *apply("readout_weights"), tokens,
                                         operand_dtype=cfg.matmul_operand_dtype)


def _readout_terms(apply, cfg, config: LossConfig, x0, out, inputs: LossInputs, schedule):
  """(name, weight, per-token decoder CE) of the rounding term -log p(w | z_tmin) and the anchor
  term on x0_hat, those with a non-zero weight."""
  terms = []
  if config.rounding_weight:
    t_min = jnp.full_like(inputs.t, schedule.t_min)
    z0 = q_sample(x0, t_min, inputs.noise[1], schedule) / schedule.gamma(t_min)[:, None, None]
    terms.append(("rounding_loss", config.rounding_weight,
                  decoder_cross_entropy(apply, cfg, z0, inputs.tokens)))
  if config.anchor_weight:
    terms.append(("anchor_loss", config.anchor_weight,
                  decoder_cross_entropy(apply, cfg, out.x0_hat, inputs.tokens)))
  return terms


def _accuracy(apply, cfg, x0_hat, tokens, token_mask, num_examples: int) -> dict:
  """Decoded accuracy of x0_hat, a monitoring metric: on a few examples only, since decoding costs
  a vocabulary matmul (and for a latent encoder its decoder) that does no training work."""
  k = min(num_examples, tokens.shape[0])
  x0_hat = jax.lax.stop_gradient(x0_hat[:k])
  if cfg.is_latent:
    predicted = vocab_ops.first_argmax(jax.lax.stop_gradient(apply("decode_logits", x0_hat)))
  else:
    table, bias = jax.lax.stop_gradient(apply("readout_weights"))
    predicted = vocab_ops.argmax_scores(x0_hat, table, bias)
  correct = predicted == tokens[:k]
  return {"token_accuracy": jnp.sum(correct.astype(jnp.float32) * token_mask[:k]),
          "accuracy_tokens": jnp.sum(token_mask[:k])}


def bound_times(schedule: schedules_lib.Schedule, tau: Array, length: int) -> tuple[Array, Array]:
  """Times for the bound's Monte Carlo integral over tau ~ U[0, 1], and d t / d tau.

  Without position skew, t = t_min + tau (t_max - t_min), both [batch]. With it, each position's
  time [batch, length] moves at rate 1 + w inside [t_min, t_max] and stands still where clipped,
  so every position still travels the whole schedule once as tau goes from 0 to 1.
  """
  if not schedule.position_skew:
    t = schedule.t_min + tau * (schedule.t_max - schedule.t_min)
    return t, jnp.full_like(t, schedule.t_max - schedule.t_min)
  raw = schedule.skewed_times(tau, length)
  inside = (raw > schedule.t_min) & (raw < schedule.t_max)
  return schedule.clip(raw), jnp.where(inside, 1.0 + schedule.position_skew, 0.0)


def likelihood_bound(model, params, tokens: Array, *, t: Array, noise: Array,
                     schedule: schedules_lib.Schedule, log_snr_max: float | None = None):
  """Continuous-time variational bound on -log p(w) (VDM, Kingma et al. 2021), as sums.

  -log p(w) <= KL(q(z_1|w) || N(0, I)) + E[-log p(w | z_0)]
               + 1/2 E_{t ~ U[t_min, t_max]} [ -dlambda/dt e^lambda ||x0 - x0_hat||^2 ] (t_max - t_min).
  The bound holds for any lower end t_min, with z_0 = z_{t_min} and the tied read-out as decoder.
  `log_snr_max` moves t_min up to where log-SNR equals it: an x0-predicting denoiser keeps a small
  error floor as SNR grows, and the SNR-weighted integral over the last, nearly clean stretch would
  otherwise dominate the bound while the read-out decodes those latents almost perfectly anyway.
  Args: tokens [batch, n]; t [batch] uniforms in [0, 1]; noise [2, batch, m, dim] (m latents).
  A seq2seq source-context model ("pairs") bounds its targets given their sources; other layouts
  bound whole rows with the null context (unconditionally).
  Returns: dict of sums over the batch ("prior", "reconstruction", "diffusion", "total") and
  "positions", the denominator: the n tokens (PAD included, part of the modelled sequence).
  """
  if log_snr_max is not None:
    t_low = schedules_lib.time_at_log_snr(schedule, log_snr_max)
    schedule = dataclasses.replace(schedule, t_min=max(schedule.t_min, t_low))
  cfg = model.config
  apply = lambda method, *args, **kw: model.apply(params, *args, method=method, **kw)
  context = None
  if cfg.source_context and cfg.context_layout == "pairs":  # the bound on -log p(target | source)
    source, tokens = conditioning.split_pairs(tokens)
    context = apply("embed", source)
  x0 = apply("embed", tokens)
  t_max = jnp.full_like(t, schedule.t_max)
  t_min = jnp.full_like(t, schedule.t_min)
  g = jax.nn.sigmoid(schedule.log_snr(t_max))  # gamma_1^2; sigma_1^2 = 1 - g
  # KL(N(gamma x0, 1 - g) || N(0, 1)) per dim = (g x0^2 - g - log(1 - g)) / 2; the last two terms
  # cancel in float32 for small g, so use their series g^2/2 + g^3/3 + g^4/4 there.
  small = g < 1e-2
  g_safe = jnp.where(small, 0.5, g)
  variance_term = jnp.where(small, g**2 / 2 + g**3 / 3 + g**4 / 4, -g_safe - jnp.log1p(-g_safe))
  prior = 0.5 * (jnp.sum(expand_like(g, x0) * x0**2) + jnp.sum(variance_term) * x0[0].size)

  gamma0 = schedule.gamma(t_min)[:, None, None]
  z0 = q_sample(x0, t_min, noise[1], schedule) / gamma0
  if cfg.is_latent:  # D as p(w | z_0); the bound holds for any encoder and decoder
    reconstruction = jnp.sum(vocab_ops.token_cross_entropy(apply("decode_logits", z0), tokens))
  else:
    reconstruction = jnp.sum(vocab_ops.readout_cross_entropy(z0, *apply("readout_weights"), tokens))

  t, dt_dtau = bound_times(schedule, t, x0.shape[1])
  x_t = q_sample(x0, t, noise[0], schedule)
  log_snr = schedule.log_snr(t)
  x0_hat = apply("denoise", x_t, log_snr, context=context).x0_hat
  if cfg.self_conditioning:  # a deterministic function of x_t, so the bound still holds
    x0_hat = apply("denoise", x_t, log_snr, x0_hat, context=context).x0_hat
  sq_err = jnp.sum(jnp.square(x0 - x0_hat), axis=-1)  # [batch, length]
  snr_rate = -schedule.dlog_snr_dt(t) * jnp.exp(log_snr) * dt_dtau  # -d SNR / d tau
  diffusion = 0.5 * jnp.sum(expand_like(snr_rate, sq_err) * sq_err)
  return {"prior": prior, "reconstruction": reconstruction, "diffusion": diffusion,
          "total": prior + reconstruction + diffusion,
          "positions": jnp.asarray(tokens.size, jnp.float32)}


def nats_to_bits(nats):
  return nats / math.log(2.0)
