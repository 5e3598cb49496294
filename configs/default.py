"""The base configuration (every field documented in `cdm_jax/runtime/config_base.py`)."""

from cdm_jax.runtime.config_base import get_config  # pylint: disable=unused-import
