"""Name -> implementation tables for algorithms, backbones and dataset kinds.

A registry knows the modules that fill it and imports them on the first lookup,
so a package never imports its own submodules from a half-built `__init__`
(no import cycles), and `fewshot --help` loads none of them. The modules are
every module of a package (algorithms, backbones: adding one is one file that
registers itself) or a list (dataset kinds, whose package also holds the
machinery they share).
"""
import pkgutil
from importlib import import_module
from typing import Any, Callable, Iterable, TypeVar

from .errors import FewshotError

T = TypeVar("T")


class Registry:
    def __init__(self, kind: str, modules: Iterable[str] = (), package: str | None = None) -> None:
        """`kind` names the entries in messages ("algorithm"); `modules` are the
        absolute module names whose import registers the entries; `package`: all the
        modules of that package."""
        self.kind = kind
        self.modules = tuple(modules)
        self.package = package
        self.entries: dict = {}
        self.loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            if name in self.entries and self.entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self.entries[name] = entry
            return entry
        return wrap

    def _load(self) -> None:
        if not self.loaded:
            self.loaded = True
            modules = list(self.modules)
            if self.package:
                path = import_module(self.package).__path__
                modules += [f"{self.package}.{info.name}" for info in sorted(pkgutil.iter_modules(path),
                                                                               key=lambda info: info.name)]
            for module in modules:
                import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self.entries)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self.entries:
            raise FewshotError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self.entries
