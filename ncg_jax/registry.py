"""Components chosen by name: a registry maps a name (or a name pattern) to a factory."""
import re
from typing import Any, Callable


class ConfigError(ValueError):
  """A user-supplied name or value is invalid; the message names the valid choices."""


class Registry:
  """Maps names to factories. A pattern such as `trades<beta>` matches `trades6` and passes
  `beta="6"` to the factory; `<k>` groups match numbers."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, tuple[re.Pattern, Callable[..., Any]]] = {}

  def register(self, name: str, factory: Callable[..., Any] | None = None):
    regex = re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>\\d+(?:\\.\\d+)?)", name) + "$")
    def add(f):
      self._entries[name] = (regex, f)
      return f
    return add(factory) if factory is not None else add

  def names(self) -> list[str]:
    return list(self._entries)

  def lookup(self, name: str) -> tuple[Callable[..., Any], dict[str, str]]:
    for regex, factory in self._entries.values():
      m = regex.match(name)
      if m:
        return factory, m.groupdict()
    raise ConfigError(f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())}")

  def get(self, name: str, *args, **kwargs) -> Any:
    factory, groups = self.lookup(name)
    return factory(*args, **groups, **kwargs)

  def __contains__(self, name: str) -> bool:
    return any(r.match(name) for r, _ in self._entries.values())
