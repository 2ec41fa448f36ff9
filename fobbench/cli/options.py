"""One vocabulary for every command: option declarations shared by name, deprecated aliases.

Every concept has one option name across commands (and one CSV column name): ``--inner-steps``
(column ``inner_steps``), ``--inner-lr``, ``--meta-lr``, ``--seeds``. The spellings used
before (``--k``, ``--lr``, ``--outer-lr``, ``--seed``, ``--train-k``, ``--nu-k``) still work
for one release as hidden aliases: using one prints a one-line deprecation note on stderr.

A command whose options are shared (the two ``train`` problems) is built by :func:`command`
from :class:`Opt` declarations, so each shared option is declared once.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from fobbench.errors import FobbenchError


@dataclass(frozen=True)
class Alias:
    """A deprecated spelling of an option.

    Attributes:
        flag: the old option, e.g. ``--k``.
        param: its hidden parameter name (``deprecated_k``).
        target: the parameter it stands for (``inner_steps``).
        type_: its Python type.
    """

    flag: str
    param: str
    target: str
    type_: type


ALIASES: dict[str, str] = {
    "--k": "--inner-steps",
    "--lr": "--inner-lr",
    "--outer-lr": "--meta-lr",
    "--seed": "--seeds",
    "--train-k": "--train-inner-steps",
    "--nu-k": "--nu-inner-steps",
}
"""Old option -> its one name now (hidden aliases for one release)."""


def alias(flag: str, type_: type = str) -> Alias:
    """The :class:`Alias` of an old option listed in :data:`ALIASES`."""
    target = ALIASES[flag][2:].replace("-", "_")
    return Alias(flag, "deprecated_" + flag[2:].replace("-", "_"), target, type_)


def resolve_aliases(values: Mapping[str, Any], aliases: Sequence[Alias]) -> dict[str, Any]:
    """``values`` with every given alias moved onto its target, each noted once on stderr.

    Raises:
        FobbenchError: an alias and its new name were both given different values.
    """
    resolved = dict(values)
    for old in aliases:
        value = resolved.pop(old.param, None)
        if value is None:
            continue
        new_flag = ALIASES[old.flag]
        sys.stderr.write(f"fobbench: note: {old.flag} is deprecated and will be removed; use {new_flag}\n")
        resolved[old.target] = value
    return resolved


def alias_parameters(aliases: Sequence[Alias]) -> list[inspect.Parameter]:
    """Hidden keyword parameters (default None) for the aliases of a command's signature."""
    return [
        inspect.Parameter(a.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[a.type_ | None, typer.Option(a.flag, hidden=True)])
        for a in aliases
    ]


@dataclass(frozen=True)
class Opt:
    """One option of a generated command: parameter name, type, default and typer declaration."""

    name: str
    type_: Any
    default: Any
    option: Any

    def parameter(self, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
        """The signature parameter (``default`` overrides the declared one)."""
        value = self.default if default is inspect.Parameter.empty else default
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=value,
                                 annotation=Annotated[self.type_, self.option])


def opt(name: str, type_: Any, default: Any, *flags: str, help: str) -> Opt:  # noqa: A002 (typer's word)
    """An :class:`Opt`; the flag defaults to ``--name-with-dashes``."""
    return Opt(name, type_, default, typer.Option(*(flags or ("--" + name.replace("_", "-"),)), help=help))


def command(body: Callable[[dict[str, Any]], None], options: Sequence[Opt], aliases: Sequence[Alias] = (),
            defaults: Mapping[str, Any] | None = None, doc: str = "") -> Callable[..., None]:
    """A typer command function whose signature is built from ``options`` (+ hidden aliases).

    The function collects its arguments by parameter name, moves deprecated aliases onto their
    targets and calls ``body(values)``. ``defaults`` overrides declared defaults by name.
    """
    defaults = dict(defaults or {})
    unknown = set(defaults) - {o.name for o in options}
    if unknown:
        raise FobbenchError(f"defaults for undeclared options: {sorted(unknown)}")
    parameters = [o.parameter(defaults.get(o.name, inspect.Parameter.empty)) for o in options]
    parameters += alias_parameters(aliases)

    def run(**values: Any) -> None:
        body(resolve_aliases(values, aliases))

    run.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    run.__doc__ = doc
    return run


NU_AUTO_HELP = ", or auto: chosen from θ's dtype, λ and the method's bias order (see README)"
"""Appended to ``--nu``'s help where the command accepts ``auto``."""


def parse_nu(text: str, option: str = "--nu") -> float | str:
    """A ``--nu`` value: a non-zero number or ``auto``; anything else is a one-line error naming
    the option (:func:`fobbench.cli.checks.nu_value`)."""
    from fobbench.cli.checks import nu_value

    return nu_value(text, option)
