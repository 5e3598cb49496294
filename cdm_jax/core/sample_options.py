"""`SampleConfig`: the options of one sampling run (sampler, steps, clamp, decoder, guidance...),
validated on construction against the registries of `samplers` and `rounding`."""

import dataclasses

from cdm_jax.core import rounding, samplers
from cdm_jax.runtime import registry

CLAMPS = ("none", "hard", "soft")
TIME_GRIDS = ("uniform", "warp")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """The options of one sampling run, validated on construction; `.replace()` derives variants."""
  num_samples: int = 16
  num_steps: int = 100
  sampler: str = "ddim"          # a registered sampler: ddpm | ddim | euler | heun | renoise
  clamp: str = "soft"            # none | hard (nearest embedding) | soft (read-out expectation)
  clamp_temperature: float = 1.0
  clamp_max_t: float = 1.0       # clamp only at t <= this
  logit_temperature: float = 1.0  # x0_hat = softmax(logits / this) E (models predicting logits)
  renoise_min_t: float = 0.0     # q-sample from x0_hat at steps from t in [renoise_min_t,
  renoise_max_t: float = 0.0     #   renoise_max_t] (Shabalin et al.); an empty interval: off
  decoder: str = "readout"       # a registered decoder: readout | l2 | cosine, or contextual
                                 #   (the workdir's trained `readout.ContextualDecoder`)
  time_grid: str = "uniform"     # uniform | warp (the learned time warping's quantiles)
  guidance_scale: float = 0.0    # classifier-free guidance weight w on conditional samples (0: off)
  ddim_eta: float = 0.0          # sampler "ddim": share of each step's noise redrawn (1: DDPM's)

  def __post_init__(self):
    for field in ("num_samples", "num_steps"):
      if not getattr(self, field) >= 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}.")
    samplers.SAMPLERS.get(self.sampler)
    if self.decoder != rounding.CONTEXTUAL_DECODER:
      rounding.DECODERS.get(self.decoder)
    if self.clamp not in CLAMPS:
      raise ValueError(f"Unknown clamp {self.clamp!r}; choose one of {list(CLAMPS)}.")
    if self.time_grid not in TIME_GRIDS:
      raise ValueError(f"time_grid must be one of {list(TIME_GRIDS)}, got {self.time_grid!r}.")
    if not self.logit_temperature > 0:
      raise ValueError(f"logit_temperature must be > 0, got {self.logit_temperature}.")
    if not self.clamp_temperature > 0:
      raise ValueError(f"clamp_temperature must be > 0, got {self.clamp_temperature}.")
    if not 0.0 <= self.renoise_min_t <= 1.0 or not 0.0 <= self.renoise_max_t <= 1.0:
      raise ValueError(f"renoise_min_t and renoise_max_t must lie in [0, 1], got "
                       f"{self.renoise_min_t} and {self.renoise_max_t}.")
    if not abs(self.guidance_scale) < float("inf"):
      raise ValueError(f"guidance_scale must be finite, got {self.guidance_scale}.")
    samplers.check_ddim_eta(self.sampler, self.ddim_eta)

  @property
  def renoise_interval(self) -> tuple[float, float] | None:
    if self.renoise_max_t <= self.renoise_min_t:
      return None
    return (self.renoise_min_t, self.renoise_max_t)

  def replace(self, **changes) -> "SampleConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, values: dict) -> "SampleConfig":
    return registry.dataclass_from_dict(cls, values, "sample config")
