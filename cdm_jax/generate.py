"""Generation from a trained workdir: `cdm_jax.load(DIR).sample(...)`, the compiled sampling
function behind it, and the CLI.

python -m cdm_jax.generate --workdir=DIR --num_samples=N [--steps --sampler --clamp --seed --output]
"""

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cdm_jax import (builders, checkpointing, cli, conditioning, distill, distributed, host,
                     parallel, parameterization, readout, samplers, schedules)
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.models import DiffusionLM

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
  twice, with the known latents and with the null condition (zeros), combined by
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
  cond = model.apply(params, known, method="embed")

  def denoise_fn(x_t, t, x0_selfcond):
    log_snr = schedule.log_snr(t)
    if not guidance_scale:
      out = model.apply(params, x_t, log_snr, x0_selfcond, cond=cond, cond_mask=known_mask,
                        method="denoise")
      return jnp.where(known_mask[..., None], cond, x0_of(out))
    twice = lambda a: jnp.concatenate([a, a])
    both = model.apply(params, twice(x_t), twice(log_snr), twice(x0_selfcond),
                       cond=jnp.concatenate([cond, jnp.zeros_like(cond)]),
                       cond_mask=twice(known_mask), method="denoise")
    x0_cond, x0_null = jnp.split(x0_of(both), 2)
    return jnp.where(known_mask[..., None], cond,
                     conditioning.guide(x0_cond, x0_null, guidance_scale))

  return denoise_fn


def make_sample_fn(model: DiffusionLM, schedule: schedules.Schedule, mesh,
                   config: samplers.SampleConfig, times=None, *, guide=None, decoder=None):
  """The jit-compiled pure `(params, rng, known=None, known_mask=None, decoder_params=None) ->
  tokens [config.num_samples, length]`.

  Samples are split over the mesh; each example's randomness comes from `fold_in(rng, index)`,
  so the same seed gives the same text on any number of devices. `times`: an optional grid
  [num_steps + 1] (e.g. the learned warp's). `known` [num_samples, length] int and `known_mask`
  (bool, same shape) condition the samples: known positions come out as given (prefix, infilling
  template, seq2seq source; `conditioning` builds them). Conditional and unconditional calls
  compile separately; different prompts of one shape reuse the compiled function. `guide`: an
  optional map from the denoiser to a steered one (e.g. `guidance.classifier_guided`).
  `decoder`: the `readout.ContextualDecoder` that `config.decoder="contextual"` applies to the
  final estimate (with `decoder_params`); other decoders round it.
  """
  cfg = model.config
  contextual = config.decoder == samplers.CONTEXTUAL_DECODER
  final_decode = _final_decoder(config.decoder, decoder)
  clamp_decoder = "readout" if contextual else config.decoder  # rounding inside the loop
  num_devices = mesh.devices.size
  padded = -(-config.num_samples // num_devices) * num_devices
  shape = (cfg.seq_len, cfg.embed_dim)

  def per_device(params, keys, condition, decoder_params):
    table, bias = model.apply(params, method="readout_weights")
    # The clamp's vocabulary matmul follows the model's matmul precision; the final decode is exact.
    clamp_fn = samplers.make_clamp_fn(config.clamp, table, bias, decoder=clamp_decoder,
                                      temperature=config.clamp_temperature,
                                      operand_dtype=cfg.matmul_operand_dtype)
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
                                  renoise_interval=config.renoise_interval)
    tokens = final_decode(x0_hat, table, bias, decoder_params)
    return tokens if condition is None else jnp.where(condition[1], condition[0], tokens)

  def sharded(params, keys, condition, decoder_params):
    spec = P(parallel.BATCH)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), spec, spec, P()), out_specs=spec,
                         check_vma=False)(params, keys, condition, decoder_params)

  @jax.jit
  def sample_fn(params, rng, known=None, known_mask=None, decoder_params=None):
    if contextual and decoder_params is None:
      raise ValueError("decoder='contextual' needs decoder_params (the trained decoder's).")
    condition = _padded_condition(known, known_mask, (config.num_samples, cfg.seq_len), padded)
    return sharded(params, parallel.example_keys(rng, padded), condition,
                   decoder_params)[:config.num_samples]

  return sample_fn


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
  if name != samplers.CONTEXTUAL_DECODER:
    return lambda x0_hat, table, bias, unused_params: samplers.decode(x0_hat, table, bias, name)
  if decoder is None:
    raise ValueError("decoder='contextual' needs a trained read-out decoder: python -m "
                     "cdm_jax.readout --workdir=DIR.")

  def contextual(x0_hat, table, bias, params):
    logits = decoder.apply(params, x0_hat, table.astype(jnp.float32), bias.astype(jnp.float32))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return contextual


def _mbr_picks(groups: list[list[str]]) -> list[str]:
  """The minimum-Bayes-risk candidate of each group."""
  return [group[conditioning.mbr_select(group)] for group in groups]


def _clamp_unknown(clamp_fn, cond, known_mask, x):
  return jnp.where(known_mask[..., None], cond, clamp_fn(x))


class Generator:
  """A trained model ready to sample; compiled sampling functions are cached per `SampleConfig`."""

  def __init__(self, config, params, tokenizer, *, step: int, mesh=None, warp=None,
               readout_decoder: readout.TrainedDecoder | None = None):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.step = step
    self.warp = warp  # the learned time warp (for time_grid="warp"), or None
    self.readout_decoder = readout_decoder  # for decoder="contextual", or None
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    self.model = builders.make_model(config)
    self.schedule = builders.make_schedule(config)
    self.sample_config = builders.sample_config(config)  # the defaults of every call

  def make_sample_fn(self, config: samplers.SampleConfig | None = None, **overrides):
    """The jit-compiled pure `(params, rng) -> tokens [num_samples, length]` for `config` (default:
    `options(**overrides)`); compiled once per setting."""
    return self._compiled(config if config is not None else self.options(**overrides))

  @functools.lru_cache(maxsize=16)
  def _compiled(self, config: samplers.SampleConfig):
    return make_sample_fn(self.model, self.schedule, self.mesh, config, self._times(config),
                          decoder=self._decoder_module(config))

  def _decoder_module(self, config: samplers.SampleConfig):
    if config.decoder != samplers.CONTEXTUAL_DECODER:
      return None
    if self.readout_decoder is None:
      raise ValueError("decoder='contextual' needs a read-out decoder trained for this workdir: "
                       "python -m cdm_jax.readout --workdir=DIR.")
    return self.readout_decoder.module

  def _decoder_params(self, options: samplers.SampleConfig):
    """The contextual decoder's parameters when `options` use it (checked on every call: a decoder
    trained for another checkpoint is refused), else None."""
    if self._decoder_module(options) is None:
      return None
    trained_for = self.readout_decoder.meta["checkpoint_step"]
    if trained_for != self.step:
      raise ValueError(f"The read-out decoder was trained for checkpoint {trained_for}, not for "
                       f"this one ({self.step}); train it again: python -m cdm_jax.readout "
                       f"--workdir=DIR.")
    return self.readout_decoder.params

  def _times(self, config: samplers.SampleConfig):
    """The sampling time grid: None (uniform) or the learned warp's quantiles."""
    if config.time_grid != "warp":
      return None
    if self.warp is None:
      raise ValueError("time_grid='warp' needs the training state's learned warping.")
    return schedules.time_grid(self.schedule, config.num_steps, self.warp,
                               self.config.diffusion.get("warp_follow", "loss"))

  def options(self, **overrides) -> samplers.SampleConfig:
    """The config's sampling options with `overrides` (SampleConfig fields; `steps` for num_steps,
    `temperature` for logit_temperature); None leaves a field at its default."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in overrides:
      overrides["num_steps"] = overrides.pop("steps")
    if "temperature" in overrides:
      overrides["logit_temperature"] = overrides.pop("temperature")
    return self.sample_config.replace(**overrides)

  def sample_tokens(self, num_samples: int = 8, *, seed: int = 0, condition=None, guide=None,
                    **overrides) -> np.ndarray:
    """Token ids [num_samples, seq_len]; `condition`: None or (known [num_samples, seq_len] int,
    known_mask [num_samples, seq_len] bool), whose known tokens appear verbatim; `guide` as in
    `make_sample_fn` (compiled per call); see `options` for the overrides."""
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**32):
      raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    options = self.options(num_samples=num_samples, **overrides)
    decoder_params = self._decoder_params(options)
    if guide is None:
      fn = self.make_sample_fn(options)
    else:
      fn = make_sample_fn(self.model, self.schedule, self.mesh, options, self._times(options),
                          guide=guide, decoder=self._decoder_module(options))
    if condition is None:
      return distributed.to_host(fn(self.params, jax.random.PRNGKey(seed),
                                    decoder_params=decoder_params))
    self._require_conditioning()
    known, known_mask = (np.asarray(a) for a in condition)
    return distributed.to_host(fn(self.params, jax.random.PRNGKey(seed), known, known_mask,
                                  decoder_params))

  def sample_guided(self, num_samples: int, guide, *, seed: int = 0, **overrides) -> list[str]:
    """Unconditional samples steered by `guide` (see `make_sample_fn`), e.g.
    `lambda f: guidance.classifier_guided(f, log_prob_fn, g.schedule, scale)`; compiled per call."""
    return self.decode(self.sample_tokens(num_samples, seed=seed, guide=guide, **overrides))

  def decode(self, tokens: np.ndarray) -> list[str]:
    return [tokenizer_lib.decode_tokens(self.tokenizer, row) for row in tokens]

  def sample(self, num_samples: int = 8, *, seed: int = 0, prefix: str | None = None,
             suffix: str | None = None, gap_length: int = 8, lengths=None,
             **overrides) -> list[str]:
    """`num_samples` strings; the same options and seed give the same text on any device count.

    `prefix`: every sample starts with it (its pieces verbatim) and continues freely. `suffix`:
    every sample ends with it, after `gap_length` generated pieces (`infill("___:N suffix")`).
    `lengths`: one piece count per sample (e.g. `conditioning.draw_lengths(data.train, n)`, the
    corpus's length distribution): BOS, that many generated pieces, then EOS and PAD known.
    """
    if gap_length < 1:
      raise ValueError(f"gap_length must be >= 1, got {gap_length}.")
    if lengths is not None:
      if prefix is not None or suffix is not None:
        raise ValueError("lengths= fixes the whole layout; it does not combine with prefix/suffix.")
      if len(lengths) != num_samples:
        raise ValueError(f"lengths has {len(lengths)} entries for {num_samples} samples.")
      layouts = [conditioning.length_layout(int(n), self.config.data.seq_len) for n in lengths]
      return self._conditional(layouts, seed=seed, **overrides)
    if prefix is not None and suffix is not None:
      return self.infill(f"{prefix} ___:{gap_length} {suffix}", num_samples, seed=seed, **overrides)
    if suffix is not None:
      return self.infill(f"___:{gap_length} {suffix}", num_samples, seed=seed, **overrides)
    if prefix is None:
      return self.decode(self.sample_tokens(num_samples, seed=seed, **overrides))
    layout = conditioning.prefix_layout(self.tokenizer, prefix, self.config.data.seq_len)
    return self._conditional([layout] * num_samples, seed=seed, **overrides)

  def infill(self, template: str, num_samples: int = 1, *, seed: int = 0,
             gap_length: int | tuple[int, int] = 4, mbr: int = 1, **overrides) -> list[str]:
    """Fills the gaps of `template`: `___` is a gap of `gap_length` pieces, `___:N` one of N.
    `gap_length=(lo, hi)` draws each sample's default gap length uniformly from lo..hi (seeded).
    The text outside the gaps appears verbatim and the sample ends where the template does.
    `mbr=k`: k candidates per sample, the minimum-Bayes-risk one kept (`conditioning.mbr_select`).
    """
    seq_len = self.config.data.seq_len
    if isinstance(gap_length, int):
      lengths = [gap_length] * num_samples
    else:
      low, high = gap_length
      if not 1 <= low <= high:
        raise ValueError(f"gap_length=(lo, hi) needs 1 <= lo <= hi, got {gap_length}.")
      lengths = np.random.default_rng(seed).integers(low, high + 1, num_samples).tolist()
    layouts = [conditioning.template_layout(self.tokenizer, template, seq_len, n) for n in lengths]
    return self._conditional(layouts, seed=seed, mbr=mbr, **overrides)

  def generate(self, sources: list[str], *, seed: int = 0, mbr: int = 1, **overrides) -> list[str]:
    """Seq2seq: one target per source, for a model trained on `BOS source EOS target EOS`
    sequences (`data.source_field`/`target_field` or a WordNet task, `condition.source`).
    `mbr=k` as in `infill`."""
    return _mbr_picks(self.generate_candidates(sources, mbr, seed=seed, **overrides))

  def generate_candidates(self, sources: list[str], k: int = 1, *, seed: int = 0,
                          **overrides) -> list[list[str]]:
    """k independent targets per source (for accuracy@k or your own reranking)."""
    if isinstance(sources, str):
      raise ValueError("Pass a list of sources; wrap a single one in a list.")
    seq_len = self.config.data.seq_len
    layouts = [conditioning.source_layout(self.tokenizer, text, seq_len) for text in sources]
    return self.candidates(layouts, k, seed=seed, target_only=True, **overrides)

  def _conditional(self, layouts, *, seed: int, mbr: int = 1, **overrides) -> list[str]:
    """One text per (known, mask) layout: the MBR pick of `mbr` candidates."""
    return _mbr_picks(self.candidates(layouts, mbr, seed=seed, **overrides))

  def candidates(self, layouts, k: int, *, seed: int = 0, target_only: bool = False,
                 **overrides) -> list[list[str]]:
    """k sampled texts per (known [seq_len], mask [seq_len]) layout (`conditioning` builds them);
    with `target_only`, the text after the first EOS (seq2seq)."""
    if not layouts:
      raise ValueError("Nothing to sample: no prompt given.")
    if k < 1:
      raise ValueError(f"The number of candidates (mbr) must be >= 1, got {k}.")
    known = np.repeat(np.stack([row for row, _ in layouts]), k, axis=0)
    mask = np.repeat(np.stack([m for _, m in layouts]), k, axis=0)
    tokens = self.sample_tokens(len(known), seed=seed, condition=(known, mask), **overrides)
    if target_only:
      tokens = [conditioning.target_tokens(row) for row in tokens]
    texts = self.decode(tokens)
    return [texts[i:i + k] for i in range(0, len(texts), k)]

  def _require_conditioning(self):
    if not self.config.model.conditioning:
      raise ValueError("This model was trained without model.conditioning, so it cannot take a "
                       "prefix, template or source; train one with the condition mixture "
                       "(configs default to it).")


def load(workdir: str, *, use_ema: bool = True, step: int | None = None,
         num_devices: int | None = None, matmul_dtype: str | None = None,
         student: int | None = None) -> Generator:
  """Restores the parameters (EMA by default) and the time warp of the latest (or given)
  checkpoint of `workdir` onto the visible devices; nothing else of the train state is read.
  `matmul_dtype` overrides the config's `model.matmul_dtype` for sampling (parameters stay as
  trained, e.g. "bfloat16" operands for a model trained in float32). `student=N`: the N-step
  student that `cdm_jax.distill` wrote beside the model instead, sampling with N DDIM steps by
  default."""
  host.tune_malloc()  # before any JAX call, or it cannot apply
  config = builders.load_config(workdir)
  if matmul_dtype is not None:
    config.model.matmul_dtype = matmul_dtype
  mesh = parallel.make_mesh(num_devices)
  if student is not None:
    return _load_student(workdir, config, mesh, student)
  key = "ema_params" if use_ema else "params"
  model = builders.make_model(config)
  abstract = {key: builders.abstract_params(config, model, mesh),
              "warp": builders.abstract_warp(config, mesh)}
  restored, step = checkpointing.restore_subtree(workdir, abstract, step)
  return Generator(config, restored[key], tokenizer_lib.load_tokenizer(workdir), step=step,
                   mesh=mesh, warp=distributed.to_host(restored["warp"]),
                   readout_decoder=readout.load(workdir, builders.model_config(config), mesh))


def _load_student(workdir: str, config, mesh, steps: int) -> Generator:
  """A `Generator` of the `steps`-step student: DDIM on the grid it was distilled on (uniform, or
  the teacher's learned warp), no clamp, no temperature or re-noising (the sampler it was distilled
  for); other options as the config's, and every one can be overridden."""
  meta = distill.read_student(workdir, steps)
  abstract = builders.abstract_params(config, builders.make_model(config), mesh)
  params = checkpointing.restore_tree(distill.student_path(workdir, steps) / "params", abstract)
  time_grid, warp = meta.get("time_grid", "uniform"), None
  if time_grid == "warp":  # the grid it was distilled on: its teacher checkpoint's learned warp
    restored, _ = checkpointing.restore_subtree(
        workdir, {"warp": builders.abstract_warp(config, mesh)}, meta["teacher_checkpoint_step"])
    warp = distributed.to_host(restored["warp"])
  config.sample.update(num_steps=steps, sampler="ddim", clamp="none", time_grid=time_grid,
                       logit_temperature=1.0, renoise_min_t=0.0, renoise_max_t=0.0)
  return Generator(config, params, tokenizer_lib.load_tokenizer(workdir),
                   step=meta["teacher_checkpoint_step"], mesh=mesh, warp=warp)


def define_sampling_flags(flags, num_samples: int):
  """The sampling flags shared by the generate and evaluate CLIs (None: the config's value)."""
  flags.DEFINE_integer("num_samples", num_samples, "How many samples.")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's sample.num_steps).")
  flags.DEFINE_string("sampler", None, "ddpm | ddim | euler | heun.")
  flags.DEFINE_string("clamp", None, "none | hard | soft.")
  flags.DEFINE_string("decoder", None, "readout | l2 | cosine | contextual (the workdir's trained "
                      "read-out decoder: python -m cdm_jax.readout).")
  flags.DEFINE_float("temperature", None, "x0_hat = softmax(logits / T) E at every step (models "
                     "predicting logits; default: the config's sample.logit_temperature).")
  flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance weight of conditional "
                     "samples (0: off; needs a prefix, template or source).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sampling_overrides(flag_values) -> dict:
  """The sampling flags' values as `Generator.options` overrides."""
  return {name: getattr(flag_values, name) for name in ("steps", "sampler", "clamp", "decoder",
                                                        "temperature", "guidance_scale")}


def _cli_samples(generator: Generator, f) -> list[str]:
  """The texts the generate CLI's flags ask for: sources, a template, a prefix/suffix, or free."""
  if sum(x is not None for x in (f.source, f.template, f.prefix or f.suffix)) > 1:
    raise ValueError("Give one of --source, --template, or --prefix/--suffix.")
  overrides = sampling_overrides(f)
  gap = {} if f.gap_length is None else {"gap_length": f.gap_length}
  if f.source:
    return generator.generate(f.source, seed=f.seed, mbr=f.mbr, **overrides)
  if f.template is not None:
    return generator.infill(f.template, f.num_samples, seed=f.seed, mbr=f.mbr, **gap, **overrides)
  return generator.sample(f.num_samples, seed=f.seed, prefix=f.prefix, suffix=f.suffix, **gap,
                          **overrides)


def main(argv=None):
  from absl import app, flags, logging as absl_logging  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
  define_sampling_flags(flags, num_samples=8)
  flags.DEFINE_string("prefix", None, "Continue this text (its pieces appear verbatim).")
  flags.DEFINE_string("suffix", None, "End with this text, after --gap_length generated pieces.")
  flags.DEFINE_string("template", None, "Fill the gaps of this text: ___ (--gap_length pieces) "
                      "or ___:N (N pieces), e.g. 'the ___:3 of a tree'.")
  flags.DEFINE_multi_string("source", None, "Seq2seq: one target per --source (repeatable).")
  flags.DEFINE_integer("gap_length", None, "Default gap length (template: 4, suffix: 8).")
  flags.DEFINE_integer("mbr", 1, "Candidates per template or source; the MBR one is kept.")
  flags.DEFINE_bool("raw_params", False, "Use the raw parameters instead of the EMA.")
  flags.DEFINE_integer("student", None, "Sample the N-step student that cdm_jax.distill wrote "
                       "(N DDIM steps unless --steps says otherwise).")
  flags.DEFINE_string("matmul_dtype", None, "Override model.matmul_dtype (e.g. bfloat16).")
  flags.DEFINE_string("output", None, "Also write the samples to this file, one per line "
                      "(by process 0 of a multi-process run).")
  cli.define_multihost_flags(flags)

  def run(unused_argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    f = flags.FLAGS
    cli.join_if_asked(f)
    generator = load(f.workdir, use_ema=not f.raw_params, matmul_dtype=f.matmul_dtype,
                     student=f.student)
    texts = _cli_samples(generator, f)
    for text in texts:
      print(text)
    if f.output:
      distributed.on_primary(lambda: pathlib.Path(f.output).write_text(
          "\n".join(texts) + "\n", encoding="utf-8"), f"writing {f.output}")

  app.run(cli.user_errors_exit(run), argv=argv or sys.argv)


if __name__ == "__main__":
  main()
