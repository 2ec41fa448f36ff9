"""The torch-free option checks agree with the code they guard: defaults pass, vocabularies and
method facts are the very ones the heavy modules use."""

from __future__ import annotations

from pathlib import Path

import pytest

from fobbench import choices, methods
from fobbench.cli import checks, load_commands
from fobbench.errors import FobbenchError


def _defaults(words: tuple[str, ...]) -> dict[str, object]:
    command = load_commands()
    for word in words:
        command = command.commands[word]  # type: ignore[attr-defined]
    return {p.name: p.default for p in command.params if not p.name.startswith("deprecated_")}


@pytest.mark.parametrize("words", [w for w in checks.CHECKS if w[0] not in ("compare", "plot")])
def test_every_command_default_passes_its_checks(words: tuple[str, ...]) -> None:
    values = _defaults(words)
    if words == ("train", "problem"):
        values["problem"] = "mnist1d"
    checks.CHECKS[words](values)


def test_compare_and_plot_checks_accept_good_paths_and_refuse_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("x\n")
    compare = {**_defaults(("compare",)), "base": tmp_path, "new": tmp_path / "r.csv"}
    checks.check_compare(compare)
    with pytest.raises(FobbenchError, match="--alpha"):
        checks.check_compare({**compare, "alpha": 1.5})
    plot = {**_defaults(("plot",)), "path": tmp_path}
    assert checks.check_plot(plot) == tmp_path.absolute().parent / f"{tmp_path.name}-figures"
    with pytest.raises(FobbenchError, match="--format"):
        checks.check_plot({**plot, "fmt": "gif"})


@pytest.mark.parametrize(("words", "key", "bad", "message"), [
    (("memory",), "seq", "32,", "--seq"),
    (("memory",), "heads", 0, "--heads"),
    (("gradcheck",), "lam_grid", "0..1@3", "--lam-grid"),
    (("gradcheck",), "experiments", "rates", "3 values"),
    (("train", "mnist1d"), "inner_optimizer", "sgd", "--inner-optimizer"),
    (("train", "mnist1d"), "chunk_size", 0, "--chunk-size"),
    (("speed",), "min_run_time", 0.0, "--min-run-time"),
])
def test_one_bad_value_is_named(words: tuple[str, ...], key: str, bad: object, message: str) -> None:
    values = {**_defaults(words), key: bad}
    if key == "experiments":
        values["rate_delta"] = "1e-8,1e-6"
    with pytest.raises(FobbenchError, match=message):
        checks.CHECKS[words](values)


def test_the_vocabularies_are_the_ones_the_heavy_modules_use() -> None:
    from fobbench import distributed, inner, meta_optim, peers
    from fobbench.experiments import memory, speed
    from fobbench.experiments.gradcheck import config
    from fobbench.figures import common
    from fobbench.measure import memory as measure_memory
    from fobbench.models import transformer
    from fobbench.problems import omniglot

    assert choices.INNER_OPTIMIZERS == inner.OPTIMIZERS
    assert choices.OUTER_OPTIMIZERS == meta_optim.OUTER
    assert choices.FIGURE_FORMATS == common.FORMATS
    assert choices.MEMORY_ARCHS == memory.ARCHS
    assert choices.MEMORY_BACKENDS == measure_memory.BACKENDS
    assert choices.SDPA_MODES == transformer.SDPA_MODES
    assert choices.SPEED_BATCHINGS == speed.BATCHINGS
    assert tuple(peers.PEERS) == choices.PEERS
    assert choices.GRADCHECK_EXPERIMENTS == config.EXPERIMENTS
    assert choices.DEFAULT_GRADCHECK_EXPERIMENTS == config.DEFAULT_EXPERIMENTS
    assert tuple(config.DTYPES) == choices.GRADCHECK_DTYPES
    assert choices.OMNIGLOT_SPLITS == omniglot.SPLIT_NAMES
    assert choices.DIST_BACKENDS == distributed.BACKENDS


def test_every_declared_method_is_implemented_with_exactly_its_facts() -> None:
    from fobbench.estimators import REGISTRY, EstimatorConfig, nu_rule

    assert methods.BUILTIN == set(REGISTRY) == set(methods.METHODS)  # no test method left behind
    for name, estimator in REGISTRY.items():
        declared = methods.METHODS[name].facts()
        assert {k: getattr(estimator, k) for k in declared} == declared
        for field in methods.METHODS[name].hyperparameters:
            assert field in EstimatorConfig.__dataclass_fields__, (name, field)
    for field, text in methods.HYPERPARAMETER_HELP.items():
        assert EstimatorConfig.__dataclass_fields__[field].metadata["help"] == text
    assert nu_rule.AUTO == methods.AUTO


def test_an_undeclared_built_in_cannot_register() -> None:
    from fobbench.estimators import REGISTRY, register

    with pytest.raises(TypeError, match="not declared in fobbench.methods"):
        register("no-such-declaration")
    assert "no-such-declaration" not in REGISTRY
