"""A registry of named records (the methods, the tasks): one record per name, looked up with an error that lists
the known names."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from vit_adapt.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
  """Records with a `name` field. `unknown(name, known_names)` is the message of the UserError `get` raises."""

  def __init__(self, kind: str, unknown: Callable[[str, list[str]], str]):
    self._kind = kind
    self._unknown = unknown
    self._records: dict[str, T] = {}

  def register(self, record: T) -> T:
    if record.name in self._records:
      raise ValueError(f"{self._kind} {record.name!r} registered twice")
    self._records[record.name] = record
    return record

  def get(self, name: str) -> T:
    if name not in self._records:
      raise UserError(self._unknown(name, self.names()))
    return self._records[name]

  def names(self) -> list[str]:
    return sorted(self._records)
