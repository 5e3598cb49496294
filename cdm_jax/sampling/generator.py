"""A trained model ready to sample: `cdm_jax.load(DIR)` returns a `Generator`, whose `sample`,
`infill`, `generate` (seq2seq) and `sample_tokens` take explicit sampling options and run compiled
functions cached per setting."""

import collections
import dataclasses
import difflib
import warnings

import jax
import numpy as np

from cdm_jax.core import conditioning, rounding, sample_options, schedules
from cdm_jax.core import mbr as mbr_lib
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing, distributed, parallel
from cdm_jax.sampling import artifacts
from cdm_jax.sampling.sample_fn import make_sample_fn


def _mbr_picks(groups: list[list[str]]) -> list[str]:
  """The minimum-Bayes-risk candidate of each group."""
  return [group[mbr_lib.mbr_select(group)] for group in groups]


DEFAULT_BATCH_SIZE = 64  # samples per compiled call of `Generator.sample_tokens`
MAX_GUIDED = 8  # guided sample functions a Generator keeps (each holds its guide)
_ALIASES = {"steps": "num_steps", "temperature": "logit_temperature"}  # deprecated names


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  """`rows` [n, ...] with zero rows (PAD, unknown) appended up to `size`."""
  return np.concatenate([rows, np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)])


class Generator:
  """A trained model ready to sample; compiled sampling functions are cached per `SampleConfig`."""

  def __init__(self, config, params, tokenizer, *, step: int, mesh=None, warp=None,
               readout_decoder: artifacts.TrainedDecoder | None = None):
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
    self._cache = {}  # SampleConfig -> (None, compiled sample function)
    self._guided = collections.OrderedDict()  # (id(guide), SampleConfig) -> (guide, function)

  def make_sample_fn(self, config: sample_options.SampleConfig | None = None, **overrides):
    """The jit-compiled pure `(params, rng) -> tokens [num_samples, length]` for `config` (default:
    `options(**overrides)`); compiled once per setting."""
    return self._compiled(config if config is not None else self.options(**overrides))

  def _compiled(self, config: sample_options.SampleConfig, guide=None):
    """The sample function of `config` (and `guide`), built once: the cache lives on the instance
    and goes with it. Guided functions close over their guide, so the last `MAX_GUIDED` are kept
    (with their guides) and older ones are dropped."""
    key = config if guide is None else (id(guide), config)
    cache = self._cache if guide is None else self._guided
    if key not in cache:
      cache[key] = (guide, make_sample_fn(self.model, self.schedule, self.mesh, config,
                                          self._times(config), guide=guide,
                                          decoder=self._decoder_module(config)))
    if guide is not None:
      cache.move_to_end(key)
      while len(cache) > MAX_GUIDED:
        cache.popitem(last=False)
    return cache[key][1]

  @property
  def num_compiled(self) -> int:
    """How many sample functions this Generator holds (each compiled once)."""
    return len(self._cache) + len(self._guided)

  def _decoder_module(self, config: sample_options.SampleConfig):
    if config.decoder != rounding.CONTEXTUAL_DECODER:
      return None
    if self.readout_decoder is None:
      raise ValueError("decoder='contextual' needs a read-out decoder trained for this workdir: "
                       "cdm-readout --workdir=DIR.")
    return self.readout_decoder.module

  def _decoder_params(self, options: sample_options.SampleConfig):
    """The contextual decoder's parameters when `options` use it (checked on every call: a decoder
    trained for another checkpoint is refused), else None."""
    if self._decoder_module(options) is None:
      return None
    trained_for = self.readout_decoder.meta["checkpoint_step"]
    if trained_for != self.step:
      raise ValueError(f"The read-out decoder was trained for checkpoint {trained_for}, not for "
                       f"this one ({self.step}); train it again: cdm-readout "
                       f"--workdir=DIR.")
    return self.readout_decoder.params

  def _times(self, config: sample_options.SampleConfig):
    """The sampling time grid: None (uniform) or the learned warp's quantiles."""
    if config.time_grid != "warp":
      return None
    if self.warp is None:
      raise ValueError("time_grid='warp' needs the training state's learned warping.")
    return schedules.time_grid(self.schedule, config.num_steps, self.warp,
                               self.config.diffusion.get("warp_follow", "loss"))

  def options(self, **overrides) -> sample_options.SampleConfig:
    """The config's sampling options with `overrides`, each a `SampleConfig` field by its own name
    (`num_steps`, `sampler`, `clamp`, `logit_temperature`, ...); None leaves a field at its
    default. A name that is no field is an error listing the valid ones; the old aliases `steps`
    and `temperature` still work, with a DeprecationWarning."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for alias, name in _ALIASES.items():
      if alias in overrides:
        warnings.warn(f"{alias}= is deprecated; use {name}=.", DeprecationWarning, stacklevel=3)
        overrides[name] = overrides.pop(alias)
    fields = {f.name for f in dataclasses.fields(sample_options.SampleConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      close = {name: difflib.get_close_matches(name, fields, n=1) for name in unknown}
      hints = ", ".join(f"{n!r}" + (f" (did you mean {c[0]!r}?)" if c else "")
                        for n, c in close.items())
      raise ValueError(f"Unknown sampling option {hints}; the options are {sorted(fields)}.")
    return self.sample_config.replace(**overrides)

  def sample_tokens(self, num_samples: int = 8, *, seed: int = 0, condition=None, guide=None,
                    batch_size: int = DEFAULT_BATCH_SIZE, **overrides) -> np.ndarray:
    """Token ids [num_samples, seq_len]; `condition`: None or (known [num_samples, seq_len] int,
    known_mask [num_samples, seq_len] bool), whose known tokens appear verbatim; `guide` as in
    `make_sample_fn`; see `options` for the overrides. Samples run `batch_size` at a time (that
    bounds memory), each batch padded to a power of two, so any `num_samples` compiles at most a
    few shapes; row i is the same whatever `batch_size` and the device count."""
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**32):
      raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    if not (isinstance(num_samples, (int, np.integer)) and num_samples >= 1):
      raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
      raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    options = self.options(**overrides)
    decoder_params = self._decoder_params(options)
    if condition is not None:
      condition = tuple(np.asarray(a) for a in condition)
      self._require_conditioning(condition)
    key, rows = jax.random.PRNGKey(seed), []
    for start in range(0, num_samples, batch_size):
      size = min(batch_size, num_samples - start)
      bucket = min(batch_size, 1 << (size - 1).bit_length())
      fn = self._compiled(options.replace(num_samples=bucket), guide)
      offset = np.int32(start)
      if condition is None:
        out = fn(self.params, key, decoder_params=decoder_params, offset=offset)
      else:
        known, mask = (_pad_rows(a[start:start + size], bucket) for a in condition)
        out = fn(self.params, key, known, mask, decoder_params, offset)
      rows.append(distributed.to_host(out)[:size])
    return np.concatenate(rows)

  def sample_guided(self, num_samples: int, guide, *, seed: int = 0, **overrides) -> list[str]:
    """Unconditional samples steered by `guide` (see `make_sample_fn`), e.g.
    `lambda f: guidance.classifier_guided(f, log_prob_fn, g.schedule, scale)`; compiled once per
    guide object and setting (keep the guide to reuse it)."""
    return self.decode(self.sample_tokens(num_samples, seed=seed, guide=guide, **overrides))

  def decode(self, tokens: np.ndarray) -> list[str]:
    return [tokenizer_lib.decode_tokens(self.tokenizer, row) for row in tokens]

  def sample(self, num_samples: int = 8, *, seed: int = 0, prefix: str | None = None,
             suffix: str | None = None, gap_length: int = 8, lengths=None,
             **overrides) -> list[str]:
    """`num_samples` strings; the same options and seed give the same text on any device count.

    `prefix`: every sample starts with it (its pieces verbatim) and continues freely. `suffix`:
    every sample ends with it, after `gap_length` generated pieces (`infill("___:N suffix")`).
    `lengths`: one piece count per sample (e.g. `data.encoding.draw_lengths(data.train, n)`, the
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

  def infill(self, template: str, num_samples: int = 8, *, seed: int = 0,
             gap_length: int | tuple[int, int] = 4, mbr: int = 1, **overrides) -> list[str]:
    """Fills the gaps of `template`: `___` is a gap of `gap_length` pieces, `___:N` one of N.
    `gap_length=(lo, hi)` draws each sample's default gap length uniformly from lo..hi (seeded).
    The text outside the gaps appears verbatim and the sample ends where the template does.
    `mbr=k`: k candidates per sample, the minimum-Bayes-risk one kept (`core.mbr.mbr_select`).
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

  def _require_conditioning(self, condition):
    if builders.is_latent(self.config):
      if not builders.latent_condition_fits(self.model.config, *condition):
        raise ValueError(builders.latent_condition_error(self.model.config))
      return
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
  student that `cdm_jax.posttrain.distill` wrote beside the model instead, sampling with N DDIM steps by
  default."""
  config = builders.load_config(workdir)
  if matmul_dtype is not None:
    config.model.matmul_dtype = matmul_dtype
  mesh = parallel.make_mesh(num_devices)
  if student is not None:
    return _load_student(workdir, config, mesh, student)
  params, restored, step = artifacts.restore_model_params(
      config, workdir, mesh, "ema_params" if use_ema else "params", step=step,
      extra={"warp": builders.abstract_warp(config, mesh)})
  return Generator(config, params, tokenizer_lib.load_tokenizer(workdir), step=step,
                   mesh=mesh, warp=distributed.to_host(restored["warp"]),
                   readout_decoder=artifacts.load_decoder(workdir, builders.model_config(config), mesh))


def _load_student(workdir: str, config, mesh, steps: int) -> Generator:
  """A `Generator` of the `steps`-step student: DDIM on the grid it was distilled on (uniform, or
  the teacher's learned warp), no clamp, no temperature or re-noising (the sampler it was distilled
  for); other options as the config's, and every one can be overridden."""
  meta = artifacts.read_student(workdir, steps)
  newest = checkpointing.saved_steps(workdir)
  if newest and newest[-1] != meta["teacher_checkpoint_step"]:
    warnings.warn(f"The {steps}-step student of {workdir} was distilled from its step-"
                  f"{meta['teacher_checkpoint_step']} checkpoint; the model has since trained to "
                  f"step {newest[-1]}. Run cdm-distill again for a student of the newest model.",
                  stacklevel=3)
  abstract = builders.abstract_params(config, builders.make_model(config), mesh)
  params = checkpointing.restore_tree(artifacts.student_path(workdir, steps) / "params", abstract)
  time_grid, warp = meta.get("time_grid", "uniform"), None
  if time_grid == "warp":  # the grid it was distilled on: its teacher checkpoint's learned warp
    restored, _ = checkpointing.restore_subtree(
        workdir, {"warp": builders.abstract_warp(config, mesh)}, meta["teacher_checkpoint_step"])
    warp = distributed.to_host(restored["warp"])
  config.sample.update(num_steps=steps, sampler="ddim", clamp="none", time_grid=time_grid,
                       logit_temperature=1.0, renoise_min_t=0.0, renoise_max_t=0.0, ddim_eta=0.0)
  return Generator(config, params, tokenizer_lib.load_tokenizer(workdir),
                   step=meta["teacher_checkpoint_step"], mesh=mesh, warp=warp)


