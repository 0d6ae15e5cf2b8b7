"""Named registries: every method (sampler, balancer, architecture, task kind) plugs in here.

A method registers itself with a decorator that records the paper it comes from, so
`polytask methods` can list it and configs can name it. Core code never mentions a method
by name: it asks a registry.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownMethodError(KeyError):
    """A name that no registry entry answers to; the message suggests the nearest names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


@dataclass(frozen=True)
class MethodInfo:
    """What `polytask methods` prints for one registered method."""

    family: str
    name: str
    paper: str
    summary: str


class Registry(Generic[T]):
    """A family of interchangeable methods, looked up by name."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}
        self._info: dict[str, MethodInfo] = {}

    def register(self, name: str, *, paper: str) -> Callable[[T], T]:
        """Class decorator: `@BALANCERS.register("pcgrad", paper="Gradient Surgery ...")`."""

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            doc = inspect.cleandoc(getattr(entry, "__doc__", None) or "")
            summary = " ".join(doc.split("\n\n")[0].split())  # the first paragraph
            self._entries[name] = entry
            self._info[name] = MethodInfo(self.family, name, paper, summary)
            return entry

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownMethodError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown {self.family} {name!r}.{hint} "
            f"Valid choices: {', '.join(self.names())}."
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def info(self) -> list[MethodInfo]:
        return [self._info[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_submodules(package: str) -> None:
    """Import every module of `package` so that their `register` decorators run.

    Adding a method is then one new file in the package's folder.
    """
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
