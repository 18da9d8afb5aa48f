"""One registry type for every kind of plugin: solvers, aggregation rules, importance scores, backends.

A registry maps names to :class:`Plugin` entries (name, one-line summary, an ``available()``
check, and the object or factory itself). ``get`` rejects an unknown name with the nearest
known one, and an unavailable one with the install hint; dispatch is always by the registry,
never by comparing names. The interface each kind satisfies is a ``typing.Protocol`` beside its
registry (``solvers.Solver``, ``aggregation.AggregationRule``, ``importance.ImportanceScore``,
``federated.Backend``). No torch here: this module sits on the planning path.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import LoraPlannerError, nearest

T = TypeVar("T")


def always() -> bool:
    return True


@dataclass(frozen=True)
class Plugin(Generic[T]):
    """One registered plugin.

    Attributes:
        name: the name users pass (``--solver knapsack``).
        summary: one line for ``--help`` listings.
        obj: the plugin itself: a solver, a score, or a factory of rules / backends.
        available: whether its optional dependencies are installed (imports them lazily).
        install: the fix to print when it is not available.
    """

    name: str
    summary: str
    obj: T
    available: Callable[[], bool] = always
    install: str = ""


class Registry(Mapping[str, Plugin[T]]):
    """Name -> Plugin, in registration order; ``get`` names the parameter in its errors."""

    def __init__(self, kind: str, parameter: str, plugins: list[Plugin[T]] | tuple[Plugin[T], ...] = ()):
        self.kind, self.parameter = kind, parameter
        self._items: dict[str, Plugin[T]] = {}
        for p in plugins:
            self.register(p)

    def register(self, plugin: Plugin[T]) -> Plugin[T]:
        if plugin.name in self._items:
            raise LoraPlannerError(f"{self.kind} name", "unique in its registry", plugin.name, "Pick another name.")
        self._items[plugin.name] = plugin
        return plugin

    def get(self, name: str) -> Plugin[T]:
        """The plugin called ``name``; one-line errors for an unknown or an uninstalled one."""
        if name not in self._items:
            raise LoraPlannerError(self.parameter, f"a known {self.kind}", name, nearest(str(name), self._items))
        plugin = self._items[name]
        if not plugin.available():
            raise LoraPlannerError(self.parameter, f"an installed {self.kind}", name, plugin.install)
        return plugin

    def __getitem__(self, name: str) -> Plugin[T]:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
