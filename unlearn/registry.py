"""Name -> factory registries for the framework's pluggable units.

Each kind of unit (forget loss, retain loss, direction rule, benchmark, evaluator) has its own `Registry`
instance, created in the package that defines the kind. Registries hold factories, not singleton objects, so
two runs in one process never share mutable state. An unknown name raises `ConfigError` naming the config key
and listing the registered names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from unlearn.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories for one kind of unit.

    Args:
        kind: human-readable kind, used in error messages ("forget loss").
        key: the config key users set to choose a unit ("method.forget.name").
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering `factory` under `name`; a duplicate name is a programming error."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory for `name`, or raise ConfigError naming the key and the known names."""
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "(none)"
            raise ConfigError(f"{self.key}: unknown {self.kind} {name!r}; known: {known}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the unit `name` with keyword arguments from the config."""
        factory = self.get(name)
        try:
            return factory(**kwargs)
        except TypeError as err:
            raise ConfigError(f"{self.key}={name}: bad arguments {sorted(kwargs)}: {err}") from err

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
