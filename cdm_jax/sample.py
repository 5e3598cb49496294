"""Generation from a trained workdir: `cdm_jax.load(DIR).sample(...)` and a CLI.

python -m cdm_jax.sample --workdir=DIR --num_samples=N [--steps --sampler --clamp --seed --output]
"""

import functools
import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np

from cdm_jax import checkpointing, host, parallel, schedules, train
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.models import DiffusionLM


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / train.CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"No {train.CONFIG_FILE} in {workdir!r}: not a cdm_jax workdir.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


class Generator:
  """A trained model ready to sample. Compiled sample functions are cached per setting."""

  def __init__(self, config, params, tokenizer, step: int, mesh=None, state=None):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.step = step
    self.state = state
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    self.model = DiffusionLM(train.model_config(config))
    self.schedule = train.make_schedule(config)

  @functools.lru_cache(maxsize=16)
  def make_sample_fn(self, num_samples: int, steps: int, sampler: str, clamp: str,
                     decoder: str, clamp_temperature: float, time_grid: str, clamp_max_t: float):
    """The jit-compiled pure `(params, rng) -> tokens [num_samples, length]` for one setting."""
    times = None
    if time_grid == "warp":
      if self.state is None:
        raise ValueError("time_grid='warp' needs the training state's learned warping.")
      times = schedules.time_grid(self.schedule, steps, jax.device_get(self.state.warp))
    elif time_grid != "uniform":
      raise ValueError(f"time_grid must be uniform or warp, got {time_grid!r}.")
    return parallel.make_sample_fn(self.model, self.schedule, self.mesh, num_samples, steps, sampler,
                                   clamp, decoder, clamp_temperature, times, clamp_max_t)

  def sample_tokens(self, num_samples: int = 8, steps: int | None = None, sampler: str | None = None,
                    seed: int = 0, clamp: str | None = None, decoder: str | None = None,
                    clamp_temperature: float | None = None, time_grid: str | None = None,
                    clamp_max_t: float | None = None) -> np.ndarray:
    """Token ids [num_samples, seq_len]; arguments left None come from the training config's
    `sample` block."""
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    s = self.config.sample
    pick = lambda value, default: default if value is None else value
    steps = int(pick(steps, s.num_steps))
    clamp_temperature = float(pick(clamp_temperature, s.clamp_temperature))
    if steps < 1:
      raise ValueError(f"steps must be >= 1, got {steps}.")
    if clamp_temperature <= 0:
      raise ValueError(f"clamp_temperature must be > 0, got {clamp_temperature}.")
    fn = self.make_sample_fn(num_samples, steps, pick(sampler, s.sampler), pick(clamp, s.clamp),
                             pick(decoder, s.decoder), clamp_temperature,
                             pick(time_grid, s.time_grid),
                             float(pick(clamp_max_t, s.get("clamp_max_t", 1.0))))
    return np.asarray(jax.device_get(fn(self.params, jax.random.PRNGKey(seed))))

  def decode(self, tokens: np.ndarray) -> list[str]:
    return [tokenizer_lib.decode_tokens(self.tokenizer, row) for row in tokens]

  def sample(self, num_samples: int = 8, steps: int | None = None, sampler: str | None = None,
             seed: int = 0, clamp: str | None = None, **kwargs) -> list[str]:
    """`num_samples` strings; the same arguments and seed give the same text on any device count."""
    return self.decode(self.sample_tokens(num_samples, steps, sampler, seed, clamp, **kwargs))


def load(workdir: str, use_ema: bool = True, step: int | None = None,
         num_devices: int | None = None, matmul_dtype: str | None = None) -> Generator:
  """Restores the latest (or given) checkpoint of `workdir` onto the visible devices;
  `matmul_dtype` overrides the config's `model.matmul_dtype` for sampling (parameters stay as
  trained, e.g. "bfloat16" operands for a model trained in float32)."""
  host.tune_malloc()  # before any JAX call, or it cannot apply
  config = load_config(workdir)
  if matmul_dtype is not None:
    config.model.matmul_dtype = matmul_dtype
  mesh = parallel.make_mesh(num_devices)
  model = DiffusionLM(train.model_config(config))
  tx = train.make_optimizer(config.train)
  state, step = checkpointing.restore_state_only(
      workdir, train.abstract_state(config, model, tx, mesh), step)
  params = state.ema_params if use_ema else state.params
  return Generator(config, params, tokenizer_lib.load_tokenizer(workdir), step, mesh, state)


def main(argv=None):
  from absl import app, flags, logging as absl_logging  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
  flags.DEFINE_integer("num_samples", 8, "How many samples.")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's sample.num_steps).")
  flags.DEFINE_string("sampler", None, "ddpm | ddim | euler | heun.")
  flags.DEFINE_string("clamp", None, "none | hard | soft.")
  flags.DEFINE_string("decoder", None, "readout | l2 | cosine.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_bool("raw_params", False, "Use the raw parameters instead of the EMA.")
  flags.DEFINE_string("matmul_dtype", None, "Override model.matmul_dtype (e.g. bfloat16).")
  flags.DEFINE_string("output", None, "Also write the samples to this file, one per line.")

  def run(unused_argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    f = flags.FLAGS
    generator = load(f.workdir, use_ema=not f.raw_params, matmul_dtype=f.matmul_dtype)
    texts = generator.sample(f.num_samples, f.steps, f.sampler, f.seed, f.clamp, decoder=f.decoder)
    for text in texts:
      print(text)
    if f.output:
      pathlib.Path(f.output).write_text("\n".join(texts) + "\n", encoding="utf-8")

  app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
  main()
