"""Statistics of the embedding table that reveal collapse (shrinking) and explosion (growing)."""

import jax
import jax.numpy as jnp

from cdm_jax.core import rounding
from cdm_jax.core import schedules as schedules_lib


def embedding_statistics(table: jax.Array, schedule: schedules_lib.Schedule, key: jax.Array,
                         t_small: float = 0.5, max_rows: int = 4096) -> dict:
  """Mean norm, mean pairwise L2 distance, its ratio to the noise scale sigma/gamma at `t_small`,
  and nearest-embedding (L2) decode accuracy of clean and of noised embeddings (at `t_small`).

  Pairwise distances and decoding use at most `max_rows` rows (a fixed random subset; exact for
  smaller vocabularies), so memory stays O(max_rows^2 + max_rows * vocab).
  """
  table = table.astype(jnp.float32)
  vocab = table.shape[0]
  ids = jnp.arange(vocab)
  if vocab > max_rows:
    ids = jax.random.permutation(jax.random.PRNGKey(0), vocab)[:max_rows]
  rows = table[ids]
  count = rows.shape[0]
  norms = jnp.linalg.norm(table, axis=-1)
  sq = jnp.sum(rows**2, axis=-1)
  # Mean over pairs i != j of ||e_i - e_j|| via ||e_i||^2 + ||e_j||^2 - 2 e_i.e_j (one matmul).
  dist = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0))
  mean_distance = jnp.sum(dist) / (count * (count - 1))
  gamma, sigma = schedule.alpha_sigma(jnp.float32(t_small))
  noise_scale = sigma / gamma * jnp.sqrt(table.shape[1])  # expected norm of the scaled noise
  noisy = rows + (sigma / gamma) * jax.random.normal(key, rows.shape)
  return {
      "embed_mean_norm": jnp.mean(norms),
      "embed_mean_pairwise_distance": mean_distance,
      "embed_distance_to_noise": mean_distance / noise_scale,
      "embed_decode_acc_clean": jnp.mean(rounding.decode(rows, table, method="l2") == ids),
      "embed_decode_acc_noisy": jnp.mean(rounding.decode(noisy, table, method="l2") == ids),
  }
