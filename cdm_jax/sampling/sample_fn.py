"""The compiled, sharded sampling function: `make_sample_fn(...)` returns a jit-compiled pure
`(params, rng, known, known_mask, decoder_params) -> tokens`, built from the denoiser
(`make_denoise_fn`: conditions, classifier-free guidance, logit temperature), `core.samplers`'
reverse loop and the final decoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cdm_jax.core import (conditioning, diffusion, parameterization, rounding, sample_options,
                          samplers, schedules, vocab_ops)
from cdm_jax.models import DiffusionLM, builders
from cdm_jax.runtime import parallel
from cdm_jax.core.tokens import PAD_ID

P = jax.sharding.PartitionSpec


def _tempered_x0(model: DiffusionLM, params, temperature: float):
  """DenoiserOutput -> x0_hat, re-weighting the expected embedding by softmax(logits / temperature)."""
  if temperature == 1.0:
    return lambda out: out.x0_hat
  if not temperature > 0:
    raise ValueError(f"logit_temperature must be > 0, got {temperature}.")
  if not parameterization.get(model.config.output).predicts_logits:
    raise ValueError(f"logit_temperature needs a model that predicts logits (model.output logits "
                     f"or logits_prior), not {model.config.output!r}; leave it at 1.0.")

  def x0_of(out):
    table = model.apply(params, method="embeddings")
    probs = jax.nn.softmax(out.logits.astype(jnp.float32) / temperature, axis=-1)
    return (probs @ table).astype(out.x0_hat.dtype)
  return x0_of


def make_denoise_fn(model: DiffusionLM, params, schedule: schedules.Schedule, condition=None, *,
                    guidance_scale: float = 0.0, logit_temperature: float = 1.0):
  """The sampler's `(x_t, t, x0_selfcond) -> x0_hat` for `params`.

  `condition`: None, or (known tokens [batch, length], known mask [batch, length] bool). With
  `guidance_scale` w != 0 the estimate is classifier-free guided: one forward pass over the batch
  twice, with the known latents and with the null condition (zeros; a latent model's
  `null_context`), combined by
  `conditioning.guide`; known positions keep their clean latents either way. `logit_temperature`
  tau != 1 (models that predict logits) takes x0_hat = softmax(logits / tau) E instead of
  softmax(logits) E: tau < 1 sharpens every step's estimate toward its likeliest tokens.
  """
  x0_of = _tempered_x0(model, params, logit_temperature)

  def plain(x_t, t, x0_selfcond):
    return x0_of(model.apply(params, x_t, schedule.log_snr(t), x0_selfcond, method="denoise"))

  if condition is None:
    if guidance_scale:
      raise ValueError("guidance_scale needs a condition (a prefix, template or source).")
    return plain
  known, known_mask = condition
  if model.config.source_context:  # the known row (a source, or its unknown positions filled) in context
    layout = model.config.context_layout
    fill = conditioning.UNKNOWN_FILL.get(layout, PAD_ID)  # "pairs", "split": PAD after the row
    rows = jnp.where(known_mask, known, fill)
    embed = lambda rows: model.apply(params, rows, method="embed")
    given = {"context": diffusion.context_latents(embed, rows, known_mask, None)}
    null = {"context": jnp.zeros_like(given["context"])}  # as training forms its null contexts
    if model.config.null_context == "length" and guidance_scale:  # only guidance reads a null
      blank = conditioning.blank_known(rows)
      null = {"context": diffusion.context_latents(embed, blank, known_mask, None)}
    keep_known = lambda x0_hat: x0_hat
  else:  # known positions carry their clean latents
    cond = model.apply(params, known, method="embed")
    given = {"cond": cond, "cond_mask": known_mask}
    null = {"cond": jnp.zeros_like(cond), "cond_mask": known_mask}
    keep_known = lambda x0_hat: jnp.where(known_mask[..., None], cond, x0_hat)

  def denoise_fn(x_t, t, x0_selfcond):
    log_snr = schedule.log_snr(t)
    if not guidance_scale:
      return keep_known(x0_of(model.apply(params, x_t, log_snr, x0_selfcond, method="denoise",
                                          **given)))
    twice = lambda a: jnp.concatenate([a, a])
    both = model.apply(params, twice(x_t), twice(log_snr), twice(x0_selfcond), method="denoise",
                       **{k: jnp.concatenate([given[k], null[k]]) for k in given})
    return keep_known(conditioning.guide(*jnp.split(x0_of(both), 2), guidance_scale))

  return denoise_fn


def make_sample_fn(model: DiffusionLM, schedule: schedules.Schedule, mesh,
                   config: sample_options.SampleConfig, times=None, *, guide=None, decoder=None):
  """The jit-compiled pure `(params, rng, known=None, known_mask=None, decoder_params=None,
  offset=0) -> tokens [config.num_samples, length]`; row i is example `offset + i` of `rng`.

  Samples are split over the mesh; each example's randomness comes from `fold_in(rng, index)`,
  so the same seed gives the same text on any number of devices. `times`: an optional grid
  [num_steps + 1] (e.g. the learned warp's). `known` [num_samples, length] int and `known_mask`
  (bool, same shape) condition the samples: known positions come out as given (prefix, infilling
  template, seq2seq source; `conditioning` builds them). Conditional and unconditional calls
  compile separately; different prompts of one shape reuse the compiled function. `guide`: an
  optional map from the denoiser to a steered one (e.g. `guidance.classifier_guided`).
  `decoder`: the `models.contextual_decoder.ContextualDecoder` that `config.decoder="contextual"` applies to the
  final estimate (with `decoder_params`); other decoders round it.
  """
  cfg = model.config
  if cfg.is_latent:
    _check_latent_options(config)
  contextual = config.decoder == rounding.CONTEXTUAL_DECODER
  final_decode = _final_decoder(config.decoder, decoder)
  clamp_decoder = "readout" if contextual else config.decoder  # rounding inside the loop
  num_devices = mesh.devices.size
  padded = -(-config.num_samples // num_devices) * num_devices
  shape = (cfg.latent_length, cfg.embed_dim)

  def per_device(params, keys, condition, decoder_params):
    clamp_fn, final = _clamp_and_decoder(model, params, config, clamp_decoder, final_decode)
    denoise_fn = make_denoise_fn(model, params, schedule, condition,
                                 guidance_scale=config.guidance_scale,
                                 logit_temperature=config.logit_temperature)
    if guide is not None:
      denoise_fn = guide(denoise_fn)
    if condition is not None and clamp_fn is not None:  # the clamp leaves known latents alone
      cond, known_mask = model.apply(params, condition[0], method="embed"), condition[1]
      clamp_fn = functools.partial(_clamp_unknown, clamp_fn, cond, known_mask)
    x_init = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    loop_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    x0_hat = samplers.sample_loop(denoise_fn, x_init, loop_keys, schedule, config.num_steps,
                                  sampler=config.sampler, clamp_fn=clamp_fn, times=times,
                                  clamp_max_t=config.clamp_max_t,
                                  renoise_interval=config.renoise_interval,
                                  ddim_eta=config.ddim_eta)
    return _with_condition(cfg, final(x0_hat, decoder_params), condition)

  def sharded(params, keys, condition, decoder_params):
    spec = P(parallel.BATCH)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), spec, spec, P()), out_specs=spec,
                         check_vma=False)(params, keys, condition, decoder_params)

  @jax.jit
  def sample_fn(params, rng, known=None, known_mask=None, decoder_params=None, offset=0):
    if cfg.is_latent and not cfg.source_context and known is not None:
      raise ValueError(builders.latent_condition_error(cfg))
    if contextual and decoder_params is None:
      raise ValueError("decoder='contextual' needs decoder_params (the trained decoder's).")
    condition = _padded_condition(known, known_mask, (config.num_samples, cfg.seq_len), padded)
    return sharded(params, parallel.example_keys(rng, padded, offset), condition,
                   decoder_params)[:config.num_samples]

  return _GuardedSampleFn(sample_fn, cfg)


class _GuardedSampleFn:
  """`make_sample_fn`'s jitted function (`lower`, `eval_shape`... pass through), refusing, when
  called with concrete arrays, a condition a latent model's context layout cannot take
  (`builders.latent_condition_fits`): a seq2seq model's known positions must be each row's
  `BOS source EOS`, a "split" model's a prefix (other known tokens it would return around PAD)."""

  def __init__(self, jitted, model_cfg):
    # Only "pairs" and "split" restrict the known positions; any other model's call skips the
    # check (and its copy of the condition to the host).
    restricts = (model_cfg.is_latent and model_cfg.source_context
                 and model_cfg.context_layout in ("pairs", "split"))
    self._jitted, self._latent_cfg = jitted, (model_cfg if restricts else None)

  def __call__(self, params, rng, known=None, known_mask=None, *args, **kwargs):
    concrete = not any(isinstance(x, jax.core.Tracer) for x in (known, known_mask))
    cfg = self._latent_cfg
    if (cfg is not None and known is not None and concrete
        and not builders.latent_condition_fits(cfg, np.asarray(known), np.asarray(known_mask))):
      raise ValueError(builders.latent_condition_error(cfg))
    return self._jitted(params, rng, known, known_mask, *args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._jitted, name)




def _with_condition(cfg, tokens, condition):
  """The sampled rows with the condition's known tokens in place; a seq2seq `source_context`
  model's sampled target rows after their sources, a "split" model's continuations after their
  prefixes (`conditioning.join_context`)."""
  if condition is None:
    return tokens
  known, known_mask = condition
  if cfg.source_context:
    tokens = conditioning.join_context(cfg.context_layout, known, known_mask, tokens)
  return jnp.where(known_mask, known, tokens)


def _check_latent_options(config: sample_options.SampleConfig):
  """A latent model decodes with its autoencoder's D and has no table to clamp to."""
  if config.clamp != "none":
    raise ValueError(f"clamp={config.clamp!r} rounds to an embedding table, which a latent model "
                     "(model.encoder='latent') has none of: use clamp='none'.")
  if config.decoder != "readout":
    raise ValueError(f"decoder={config.decoder!r}: a latent model decodes with its autoencoder's "
                     "decoder; leave decoder='readout' (the default).")


def _clamp_and_decoder(model: DiffusionLM, params, config: sample_options.SampleConfig,
                       clamp_decoder: str, final_decode):
  """(the clamp or None, `(x0_hat, decoder_params) -> tokens`): a latent model's D argmax (no
  table, so no clamp), or the table's clamp and `final_decode`."""
  cfg = model.config
  if cfg.is_latent:
    return None, lambda x0_hat, unused: vocab_ops.first_argmax(
        model.apply(params, x0_hat, method="decode_logits")).astype(jnp.int32)
  table, bias = model.apply(params, method="readout_weights")
  # The clamp's vocabulary matmul follows the model's matmul precision; the final decode is exact.
  clamp_fn = rounding.make_clamp_fn(config.clamp, table, bias, decoder=clamp_decoder,
                                    temperature=config.clamp_temperature,
                                    operand_dtype=cfg.matmul_operand_dtype)
  return clamp_fn, lambda x0_hat, decoder_params: final_decode(x0_hat, table, bias, decoder_params)


def _padded_condition(known, known_mask, shape: tuple[int, int], padded: int):
  """None, or (known, known_mask) checked against `shape` [num_samples, seq_len] and padded to
  `padded` rows."""
  if (known is None) != (known_mask is None):
    raise ValueError("Pass both known and known_mask, or neither.")
  if known is None:
    return None
  if known.shape != shape or known_mask.shape != known.shape:
    raise ValueError(f"known and known_mask must have shape {shape}, got {known.shape} and "
                     f"{known_mask.shape}.")
  pad = lambda a: jnp.pad(a, ((0, padded - shape[0]), (0, 0)))
  return pad(known.astype(jnp.int32)), pad(known_mask.astype(bool))


def _final_decoder(name: str, decoder):
  """`(x0_hat, table, bias, decoder_params) -> tokens`: the contextual decoder's argmax, or the
  registered rounding `name`."""
  if name != rounding.CONTEXTUAL_DECODER:
    return lambda x0_hat, table, bias, unused_params: rounding.decode(x0_hat, table, bias, name)
  if decoder is None:
    raise ValueError("decoder='contextual' needs a trained read-out decoder: python -m "
                     "cdm-readout --workdir=DIR.")

  def contextual(x0_hat, table, bias, params):
    logits = decoder.apply(params, x0_hat, table.astype(jnp.float32), bias.astype(jnp.float32))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return contextual


def _clamp_unknown(clamp_fn, cond, known_mask, x):
  return jnp.where(known_mask[..., None], cond, clamp_fn(x))
