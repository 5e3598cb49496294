"""The one `FIELD=VALUE` override parser of the scripts and CLIs: dotted config keys
(`model.width=128`, like `--config.model.width=128`) and fields of a frozen dataclass
(`num_steps=200`, typed by the field's current value). An unknown name fails with the choices."""

import ast
import dataclasses


def parse_settings(settings: list[str]) -> dict:
  """["a.b=1", "c=x"] -> {"a.b": 1, "c": "x"}: values as Python literals when they are one."""
  parsed = {}
  for setting in settings:
    key, sep, raw = setting.partition("=")
    if not sep or not key:
      raise ValueError(f"{setting!r}: expected FIELD=VALUE, e.g. num_steps=200.")
    try:
      parsed[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      parsed[key] = raw
  return parsed


def apply_to_config(config, overrides: dict):
  """Sets dotted keys of an ml_collections ConfigDict in place; returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      if part not in node:
        raise KeyError(f"Unknown config key {key!r} (no {part!r}).")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"Unknown config key {key!r}; {'.'.join(parents) or 'the config'} has "
                     f"{sorted(node.keys())}.")
    node[leaf] = value
  return config


def dataclass_overrides(instance, settings: list[str]) -> dict:
  """["sampler=ddim", "num_steps=200"] -> overrides of `instance`'s fields, each converted to the
  type of the field's current value (booleans from 1/true/0/false)."""
  fields = dataclasses.asdict(instance)
  overrides = {}
  for key, value in parse_settings(settings).items():
    if key not in fields:
      raise ValueError(f"Unknown field {key!r}; fields: {sorted(fields)}.")
    kind = type(fields[key])
    if kind is bool:
      value = str(value).lower() in ("1", "true")
    overrides[key] = value if value is None else kind(value)
  return overrides
