"""Generation from a trained workdir: `cdm_jax.load(DIR).sample(...)`, the compiled sampling
function behind it, and the CLI.

python -m cdm_jax.generate --workdir=DIR --num_samples=N [--steps --sampler --clamp --seed --output]
"""

import functools
import pathlib
import sys

import jax
import numpy as np

from cdm_jax import builders, checkpointing, host, parallel, samplers, schedules
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.models import DiffusionLM

P = jax.sharding.PartitionSpec


def make_sample_fn(model: DiffusionLM, schedule: schedules.Schedule, mesh,
                   config: samplers.SampleConfig, times=None):
  """The jit-compiled pure `(params, rng) -> tokens [config.num_samples, length]`.

  Samples are split over the mesh; each example's randomness comes from `fold_in(rng, index)`,
  so the same seed gives the same text on any number of devices. `times`: an optional grid
  [num_steps + 1] (e.g. the learned warp's).
  """
  cfg = model.config
  num_devices = mesh.devices.size
  padded = -(-config.num_samples // num_devices) * num_devices
  shape = (cfg.seq_len, cfg.embed_dim)

  def per_device(params, keys):
    table, bias = model.apply(params, method="readout_weights")
    # The clamp's vocabulary matmul follows the model's matmul precision; the final decode is exact.
    clamp_fn = samplers.make_clamp_fn(config.clamp, table, bias, decoder=config.decoder,
                                      temperature=config.clamp_temperature,
                                      operand_dtype=cfg.matmul_operand_dtype)
    x_init = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    loop_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

    def denoise_fn(x_t, t, x0_selfcond):
      return model.apply(params, x_t, schedule.log_snr(t), x0_selfcond, method="denoise").x0_hat

    x0_hat = samplers.sample_loop(denoise_fn, x_init, loop_keys, schedule, config.num_steps,
                                  sampler=config.sampler, clamp_fn=clamp_fn, times=times,
                                  clamp_max_t=config.clamp_max_t)
    return samplers.decode(x0_hat, table, bias, config.decoder)

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                          out_specs=P(parallel.AXIS), check_vma=False)

  @jax.jit
  def sample_fn(params, rng):
    return sharded(params, parallel.example_keys(rng, padded))[:config.num_samples]

  return sample_fn


class Generator:
  """A trained model ready to sample; compiled sampling functions are cached per `SampleConfig`."""

  def __init__(self, config, params, tokenizer, *, step: int, mesh=None, warp=None):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.step = step
    self.warp = warp  # the learned time warp (for time_grid="warp"), or None
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
    times = None
    if config.time_grid == "warp":
      if self.warp is None:
        raise ValueError("time_grid='warp' needs the training state's learned warping.")
      times = schedules.time_grid(self.schedule, config.num_steps, self.warp)
    return make_sample_fn(self.model, self.schedule, self.mesh, config, times)

  def options(self, **overrides) -> samplers.SampleConfig:
    """The config's sampling options with `overrides` (SampleConfig fields; `steps` for num_steps);
    None leaves a field at its default."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in overrides:
      overrides["num_steps"] = overrides.pop("steps")
    return self.sample_config.replace(**overrides)

  def sample_tokens(self, num_samples: int = 8, *, seed: int = 0, **overrides) -> np.ndarray:
    """Token ids [num_samples, seq_len]; see `options` for the overrides."""
    fn = self.make_sample_fn(num_samples=num_samples, **overrides)
    return np.asarray(jax.device_get(fn(self.params, jax.random.PRNGKey(seed))))

  def decode(self, tokens: np.ndarray) -> list[str]:
    return [tokenizer_lib.decode_tokens(self.tokenizer, row) for row in tokens]

  def sample(self, num_samples: int = 8, *, seed: int = 0, **overrides) -> list[str]:
    """`num_samples` strings; the same options and seed give the same text on any device count."""
    return self.decode(self.sample_tokens(num_samples, seed=seed, **overrides))


def load(workdir: str, *, use_ema: bool = True, step: int | None = None,
         num_devices: int | None = None, matmul_dtype: str | None = None) -> Generator:
  """Restores the parameters (EMA by default) and the time warp of the latest (or given)
  checkpoint of `workdir` onto the visible devices; nothing else of the train state is read.
  `matmul_dtype` overrides the config's `model.matmul_dtype` for sampling (parameters stay as
  trained, e.g. "bfloat16" operands for a model trained in float32)."""
  host.tune_malloc()  # before any JAX call, or it cannot apply
  config = builders.load_config(workdir)
  if matmul_dtype is not None:
    config.model.matmul_dtype = matmul_dtype
  mesh = parallel.make_mesh(num_devices)
  key = "ema_params" if use_ema else "params"
  model = builders.make_model(config)
  abstract = {key: builders.abstract_params(config, model, mesh),
              "warp": builders.abstract_warp(config, mesh)}
  restored, step = checkpointing.restore_subtree(workdir, abstract, step)
  return Generator(config, restored[key], tokenizer_lib.load_tokenizer(workdir), step=step,
                   mesh=mesh, warp=jax.device_get(restored["warp"]))


def define_sampling_flags(flags, num_samples: int):
  """The sampling flags shared by the generate and evaluate CLIs (None: the config's value)."""
  flags.DEFINE_integer("num_samples", num_samples, "How many samples.")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's sample.num_steps).")
  flags.DEFINE_string("sampler", None, "ddpm | ddim | euler | heun.")
  flags.DEFINE_string("clamp", None, "none | hard | soft.")
  flags.DEFINE_string("decoder", None, "readout | l2 | cosine.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sampling_overrides(flag_values) -> dict:
  """The sampling flags' values as `Generator.options` overrides."""
  return {name: getattr(flag_values, name) for name in ("steps", "sampler", "clamp", "decoder")}


def main(argv=None):
  from absl import app, flags, logging as absl_logging  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
  define_sampling_flags(flags, num_samples=8)
  flags.DEFINE_bool("raw_params", False, "Use the raw parameters instead of the EMA.")
  flags.DEFINE_string("matmul_dtype", None, "Override model.matmul_dtype (e.g. bfloat16).")
  flags.DEFINE_string("output", None, "Also write the samples to this file, one per line.")

  def run(unused_argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    f = flags.FLAGS
    generator = load(f.workdir, use_ema=not f.raw_params, matmul_dtype=f.matmul_dtype)
    texts = generator.sample(f.num_samples, seed=f.seed, **sampling_overrides(f))
    for text in texts:
      print(text)
    if f.output:
      pathlib.Path(f.output).write_text("\n".join(texts) + "\n", encoding="utf-8")

  app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
  main()
