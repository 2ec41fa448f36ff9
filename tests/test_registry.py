"""The estimator registry is the one place method facts live: consumers derive from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fobbench.errors import FobbenchError
from fobbench.estimators import (
    REGISTRY,
    EstimatorConfig,
    FloorPasses,
    names,
    parse_methods,
    rank_of,
    register,
    unregister,
)
from fobbench.experiments import gradcheck as gradcheck_experiment
from fobbench.experiments import train as train_experiment
from fobbench.inner import InnerConfig, loss_gradient, solve
from fobbench.params import Data, LossFn, Params
from fobbench.results import read_results

DUMMY = "dummy-fo"


@pytest.fixture
def dummy() -> Iterator[str]:
    """A first-order method registered the way an estimator module does, removed afterwards."""

    def half_fomaml(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
                    noise: Params | None = None) -> Params:
        phi = solve(theta, loss, support, query, 0.0, config.inner, in_place=config.in_place)
        return {n: 0.5 * g for n, g in loss_gradient(loss, phi, query, in_place=config.in_place).items()}

    register(DUMMY, "half of FO-MAML (test only)", order="first", rank=25,
             floor=lambda c: FloorPasses(both=0, support=c.inner.steps, query=3))(half_fomaml)
    try:
        yield DUMMY
    finally:
        unregister(DUMMY)


def test_display_order_comes_from_rank(dummy: str) -> None:
    order = names()
    assert order.index("fomaml") < order.index(dummy) < order.index("reptile")
    assert order[-1] == "exact" and "exact" not in names(trainable=True)
    assert dummy not in names(uses_nu=True) and "fobmaml-sym" in names(uses_nu=True)
    assert rank_of("no-such-method") > rank_of("exact")
    assert parse_methods("all") == order and parse_methods("all", allow_exact=False) == names(trainable=True)


def test_unknown_names_and_facts_are_rejected(dummy: str) -> None:
    with pytest.raises(FobbenchError, match=f"choose from .*{dummy}"):
        parse_methods("nope")
    with pytest.raises(FobbenchError, match="exact is gradcheck-only"):
        parse_methods("exact", allow_exact=False)
    with pytest.raises(TypeError, match="unknown facts"):
        register("bad", "x", order="first", speed=3)
    with pytest.raises(TypeError, match="not an EstimatorConfig field"):
        register("bad", "x", order="first", hyperparameters=("gamma",))
    assert "bad" not in REGISTRY


def test_floor_comes_from_the_registration(dummy: str) -> None:
    config = EstimatorConfig(inner=InnerConfig(steps=4))
    assert train_experiment.floor_passes(dummy, config) == (0, 4, 3)
    assert train_experiment.floor_passes("maml", config) == (0, 4, 1)  # the default floor


def test_a_registered_method_shows_up_in_gradcheck(dummy: str, cli, tmp_path: Path) -> None:
    code, stdout, stderr = cli("gradcheck", "--inner-steps", "1,3", "--dim", "5", "--tasks", "2", "--quiet",
                               "--no-plot",
                               "--out", str(tmp_path / "gc"))
    assert code == 0, stderr
    frame = read_results(tmp_path / "gc" / "error_vs_k.csv")
    assert dummy in set(frame["method"])
    table = gradcheck_experiment.error_table(frame)
    assert list(table.index).index(dummy) == list(table.index).index("fomaml") + 1
    assert dummy in stdout
    # Half of FO-MAML's gradient is, of course, not FO-MAML's.
    errors = frame[frame["metric"] == "rel_error"].set_index(["method", "inner_steps"])["value"]
    assert errors[(dummy, 3)] != errors[("fomaml", 3)]


def test_a_registered_method_is_in_memorys_default_set(dummy: str, cli, tmp_path: Path) -> None:
    out = tmp_path / "mem.csv"
    code, _, stderr = cli("memory", "--arch", "transformer", "--d-model", "16", "--heads", "2", "--ffn", "32",
                          "--batch", "2", "--seq", "8", "--inner-steps", "1", "--es-samples", "1",
                          "--quiet", "--no-plot",
                          "--out", str(out))
    assert code == 0, stderr
    assert set(read_results(out)["method"]) == set(names(trainable=True))


def test_figure_lines_follow_the_registry_order() -> None:
    import pandas as pd

    from fobbench.figures.common import series

    frame = pd.DataFrame({"method": ["fobmaml-sym", "maml", "zzz-unknown", "fobmaml-richardson", "fomaml"],
                          "value": [1.0, 2.0, 3.0, 4.0, 5.0]})
    assert [label for label, _ in series(frame)] == ["maml", "fomaml", "fobmaml-sym", "fobmaml-richardson",
                                                     "zzz-unknown"]
