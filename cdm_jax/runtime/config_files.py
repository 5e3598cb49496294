"""The one way a script, test or config file loads a config file: `load("configs/X.py",
{"model.width": 128})` runs its `get_config()` and applies dotted overrides (as `--config.a.b=v`
would). A missing file or one without `get_config` is a ValueError naming the path."""

import pathlib
import runpy

import ml_collections

from cdm_jax.runtime import overrides as overrides_lib


def load(path, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """`get_config()` of the config file at `path`, with `overrides` ({"a.b": value}) applied."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"No config file at {str(path)!r}.")
  get_config = runpy.run_path(str(path)).get("get_config")
  if not callable(get_config):
    raise ValueError(f"{str(path)!r} defines no get_config().")
  return overrides_lib.apply_to_config(get_config(), dict(overrides or {}))


def sibling(config_file: str, name: str, overrides: dict | None = None):
  """A config file's base config from the same folder: `sibling(__file__, "wordnet_latent.py")`."""
  return load(pathlib.Path(config_file).with_name(name), overrides)
