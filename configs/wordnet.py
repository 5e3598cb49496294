"""The CPU demo: WordNet glosses and examples, 6.8M parameters, 2,000 steps or 17 minutes on 2 cores.

The best recipe of experiments/quality/README.md (eighth round) on the sizes of wordnet_mse.py
(the demo until 2026-12-01): cross-entropy with the output prior on L2-normalized embeddings
(CDCD, Plaid), CDCD's time warping following the loss slope with the sampling grid warped alike, a
position embedding initialised at std 1 (so the denoiser sees where it is), peak learning rate
2e-3, and samples drawn at logit temperature 0.85 (x0_hat = softmax(logits / 0.85) E).
"""

import pathlib
import runpy


def get_config():
  sibling = pathlib.Path(__file__).with_name("wordnet_mse.py")
  config = runpy.run_path(str(sibling))["get_config"]()
  config.model.update(output="logits_prior", normalize_embeddings=True, pos_init_std=1.0)
  config.diffusion.update(rounding_weight=0.0, time_warp=True, importance_weight=False,
                          warp_follow="slope")
  config.train.learning_rate = 2e-3
  config.sample.update(time_grid="warp", logit_temperature=0.85)
  return config
