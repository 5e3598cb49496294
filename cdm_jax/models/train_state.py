"""The state a training run checkpoints: parameters, optimizer state, EMA, step, RNG, time warp."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cdm_jax.core import schedules as schedules_lib

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array                       # scalar int32
  params: Any
  opt_state: Any
  ema_params: Any
  rng: Array                        # raw uint32 key [2]; step keys are fold_in(rng, step)
  warp: schedules_lib.TimeWarp      # learned time warping (updated only when enabled)


def init_train_state(params, tx: optax.GradientTransformation, rng: Array,
                     warp_bins: int = 100) -> TrainState:
  """Step 0 state; EMA parameters are separate buffers (the state is donated each step)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params), rng=rng,
                    warp=schedules_lib.init_time_warp(warp_bins))
