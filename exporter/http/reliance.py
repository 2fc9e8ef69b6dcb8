"""Names of a dependency's that it does not promise to keep, and the check that they are there.

``exporter.http._hypercorn`` (hypercorn, h11, h2) and ``exporter.http.handshake``
(asyncio's TLS protocol) each list the names they rely on and check them when imported,
so that an upgrade that drops or changes one is refused at start, by name, rather than
found out per connection, or never.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class Reliance:
    """A name of a dependency's that the exporter relies on without its promise, and how
    it is checked.

    A method, class attribute or field is looked up on ``owner``; an instance attribute
    among the names the code of ``set_in``, the method that sets it, uses. A method that
    is called, overridden or replaced must still take ``parameters`` after ``self`` (any
    further one with a default), or our calls and overrides would break per connection.
    """

    owner: type
    name: str
    set_in: str = ""
    parameters: tuple[str, ...] | None = None

    def __str__(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def problem(self) -> str | None:
        """What is wrong with the installed packages' ``owner.name``, or None."""
        if self.set_in:
            code = getattr(getattr(self.owner, self.set_in, None), "__code__", None)
            if code is None or self.name not in code.co_names:
                return f"{self} (set in {self.set_in}) is gone"
            return None
        if not (hasattr(self.owner, self.name) or self.name in inspect.get_annotations(self.owner)):
            return f"{self} is gone"
        if self.parameters is None:
            return None
        try:
            signature = inspect.signature(getattr(self.owner, self.name))
        except (TypeError, ValueError):
            return f"{self} is no longer a method"
        taken = list(signature.parameters.values())[1:]  # after self
        names = tuple(parameter.name for parameter in taken)
        further = taken[len(self.parameters) :]
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if names[: len(self.parameters)] != self.parameters or any(
            parameter.default is parameter.empty and parameter.kind not in variadic
            for parameter in further
        ):
            return f"{self} takes ({', '.join(names)}), not ({', '.join(self.parameters)})"
        return None


def problems_of(
    relied_on: Sequence[Reliance], base: type, subclass: type, overridden: frozenset[str]
) -> list[str]:
    """What the installed packages fail of ``relied_on``, and each name of ``base``'s that
    ``subclass`` would hide (other than those it means to: ``overridden``)."""
    problems = [problem for reliance in relied_on if (problem := reliance.problem())]
    init = getattr(vars(base).get("__init__"), "__code__", None)
    theirs = set(dir(base)) | set(init.co_names if init else ())
    ours = set(vars(subclass)) | set(inspect.get_annotations(subclass))
    problems += [
        f"{base.__module__}.{base.__qualname__}.{name} is new: "
        f"{subclass.__qualname__}'s {name} would hide it"
        for name in sorted(ours & theirs - overridden)
        if not name.startswith("__")
    ]
    return problems


def versions_needed(supported: dict[str, str]) -> str:
    """The versions needed (``{package: pins}``) and those installed, for an error."""

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    needed = ", ".join(f"{name}{pins}" for name, pins in supported.items())
    found = ", ".join(f"{name} {installed(name)}" for name in supported)
    return f"cec-phone-exporter needs {needed} (installed: {found})"


__all__ = ["Reliance", "problems_of", "versions_needed"]
