"""Fields by name: each field class registers the names it answers to, beside its definition.

The report's Hamiltonian names (``TwoLayersHam``, ``J1``, ...) and the H-DNN papers' names
(``MS3``, ``H1_J1``, ...) map to a class and the options that make that variant. Whatever the
rest of contham needs to know about a variant (split state, even width, default solver) it asks
the class through this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .base import NodeField

F = TypeVar("F", bound=type[NodeField])


@dataclass(frozen=True)
class FieldEntry:
    """A registered field variant: its class, the options that make it, its other names."""

    name: str
    cls: type[NodeField]
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def is_split(self) -> bool:
        """True for fields on a state split in halves (y, z) (symplectic solvers need one)."""
        return self.cls.is_split

    @property
    def needs_even_features(self) -> bool:
        """True when the state width must be even."""
        return self.cls.needs_even_features(**self.options)

    @property
    def default_solver(self) -> str:
        """The scheme of the literature for this variant."""
        return self.cls.default_solver

    def build(self, features: int, **kwargs: Any) -> NodeField:
        """An instance on ``features`` features/channels; ``kwargs`` are the class's arguments."""
        return self.cls(features, **self.options, **kwargs)


FIELDS: dict[str, FieldEntry] = {}
"""Every registered variant by its main name (see `field_entry` for the aliases)."""


def register_field(name: str, *, aliases: tuple[str, ...] = (), **options: Any) -> Callable[[F], F]:
    """Class decorator: register the class under ``name`` (and ``aliases``) with ``options``."""

    def register(cls: F) -> F:
        taken = {n for e in FIELDS.values() for n in (e.name, *e.aliases)}
        clash = sorted({name, *aliases} & taken)
        if clash:
            raise ValueError(f"field name(s) {', '.join(clash)} already registered")
        FIELDS[name] = FieldEntry(name, cls, dict(options), tuple(aliases))
        return cls

    return register


def field_names(aliases: bool = False) -> tuple[str, ...]:
    """The registered names (with ``aliases=True``, also the other names)."""
    return tuple(n for e in FIELDS.values() for n in ((e.name, *e.aliases) if aliases else (e.name,)))


def field_entry(name: str) -> FieldEntry:
    """The entry of a registered name or alias (any case)."""
    for entry in FIELDS.values():
        if isinstance(name, str) and name.lower() in (n.lower() for n in (entry.name, *entry.aliases)):
            return entry
    aliases = [n for n in field_names(aliases=True) if n not in FIELDS]
    raise ValueError(
        f"function must be one of {', '.join(map(repr, FIELDS))} or the aliases {', '.join(map(repr, aliases))} "
        f"(any case); got {name!r}"
    )
