"""Name -> implementation registries for interchangeable parts (schedules, samplers, corpora...)."""

import dataclasses
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """`@registry.register("name")` adds an item; `registry.get("name")` fails with the choices."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def wrap(item: T) -> T:
      self._items[name] = item
      return item
    return wrap

  def names(self) -> list[str]:
    return sorted(self._items)

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ValueError(f"Unknown {self.kind} {name!r}; choose one of {self.names()}.")
    return self._items[name]

  def __contains__(self, name: str) -> bool:
    return name in self._items


def dataclass_from_dict(cls, values: dict, what: str):
  """`cls(**values)`, failing with the unknown keys' names (e.g. from a config block)."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"Unknown {what} keys {unknown}; known: {sorted(names)}.")
  return cls(**values)
