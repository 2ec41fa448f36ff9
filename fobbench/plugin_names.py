"""Plugin names without torch: the groups, the built-ins, installed entry points, spec syntax.

:mod:`fobbench.plugins` loads and checks plugins (and imports torch); what ``--help`` lists
and what the option checks need before any import lives here.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from fobbench.errors import FobbenchError

PROBLEMS = "fobbench.problems"
MODELS = "fobbench.models"

BUILTIN: dict[str, dict[str, str]] = {
    PROBLEMS: {
        "mnist1d": "fobbench.problems.mnist1d:MNIST1DProblem",
        "omniglot": "fobbench.problems.omniglot:OmniglotProblem",
    },
    MODELS: {
        "convnet": "fobbench.models.convnet:memory_model",
        "transformer": "fobbench.models.transformer:memory_model",
    },
}
"""The built-in plugins, as entry points of this package (the same as its pyproject's)."""


def registered(group: str) -> dict[str, EntryPoint]:
    """Plugins of ``group`` by name: the built-ins, then installed entry points (which do not
    shadow a built-in name)."""
    found = {name: EntryPoint(name, value, group) for name, value in BUILTIN[group].items()}
    for point in entry_points(group=group):
        found.setdefault(point.name, point)
    return found


def names(group: str) -> list[str]:
    """Registered plugin names of ``group`` (for ``--help``)."""
    return list(registered(group))


def check_spec(group: str, spec: str) -> str:
    """Check the syntax of a ``--problem``/``--model`` value without importing anything.

    Returns:
        ``module:attribute`` it names (a registered name resolved).

    Raises:
        FobbenchError: neither a registered name nor ``package.module:factory`` (the message of
            :func:`fobbench.plugins.load`).
    """
    option = "--problem" if group == PROBLEMS else "--model"
    spec = str(spec).strip()
    points = registered(group)
    if spec in points:
        return points[spec].value
    if ":" not in spec:
        raise FobbenchError(f"{option} '{spec}': not a registered name ({', '.join(points) or 'none'}) "
                            "nor package.module:factory")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise FobbenchError(f"{option} '{spec}': expected package.module:factory")
    return spec
