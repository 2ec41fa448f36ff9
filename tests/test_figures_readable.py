"""Figures a reader can use: fixed per-method styles, clipped axes, settings in titles."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from fobbench.figures import common
from fobbench.figures import gradcheck as gradcheck_figures
from fobbench.figures import memory as memory_figures
from fobbench.figures import train as train_figures

KS = (1, 2, 5, 10, 20, 50, 100)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, plt.Figure]:
    """Every figure the modules save, by name, left open for inspection."""
    figures: dict[str, plt.Figure] = {}

    def keep(fig: plt.Figure, out_dir: Path, name: str, fmt: str = "png") -> Path:
        figures[name] = fig
        return Path(out_dir) / f"{name}.{fmt}"

    for module in (gradcheck_figures, memory_figures, train_figures):
        monkeypatch.setattr(module, "save", keep)
    yield figures
    plt.close("all")


def _row(**values: object) -> dict[str, object]:
    return {"measured_by": "closed_form", "device_name": "cpu", "seed": 0, "cg_steps": np.nan, **values}


def _error_vs_k() -> pd.DataFrame:
    rows = []
    for method, scale in (("maml", 1e-3), ("fomaml", 0.3), ("reptile", 0.5), ("fobmaml-sym", 1e-4),
                          ("exact", 1e-16)):
        for k in KS:
            value = scale if method in ("exact", "fomaml", "reptile") else scale / k
            rows.append(_row(benchmark="gradcheck.error_vs_k", method=method, inner_steps=k, nu=0.01,
                             lam=2.0, metric="rel_error", value=value))
    for cg in (2, 5):
        for k in KS:
            rows.append(_row(benchmark="gradcheck.error_vs_k", method="imaml", inner_steps=k, nu=0.01,
                             lam=2.0, cg_steps=cg, metric="rel_error", value=0.1 / cg))
    return pd.DataFrame(rows)


def test_error_vs_k_clips_at_the_estimators_floor_and_names_exact_in_a_note(captured, tmp_path: Path) -> None:
    gradcheck_figures.draw(_error_vs_k(), tmp_path)
    ax = captured["gradcheck_error_vs_k"].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "exact" not in labels and len(labels) == 6
    bottom, _ = ax.get_ylim()
    assert 1e-7 < bottom <= 1e-6  # the floor of the estimators (1e-4 / 100) / 3, not 1e-16
    notes = [t.get_text() for t in ax.texts]
    assert any(n.startswith("exact (closed form) not drawn") for n in notes)
    assert "ν=0.01" in ax.get_title() and "λ=2" in ax.get_title()


def test_every_line_has_its_own_style_and_a_method_looks_the_same_everywhere(captured,
                                                                            tmp_path: Path) -> None:
    gradcheck_figures.draw(_error_vs_k(), tmp_path)
    lines = {line.get_label(): line for line in captured["gradcheck_error_vs_k"].axes[0].get_lines()}
    styles = [(to_rgba(line.get_color()), line.get_linestyle(), line.get_marker(),
               str(line.get_markerfacecolor()))
              for line in lines.values()]
    assert len(set(styles)) == len(styles)  # nine methods/variants, no two alike
    maml = lines["maml"]
    assert to_rgba(maml.get_color()) == to_rgba(common.METHOD_STYLES["maml"]["color"])
    assert maml.get_marker() == common.METHOD_STYLES["maml"]["marker"]
    # iMAML at two CG step counts: same colour and marker, another line style
    cg2, cg5 = lines["imaml (cg 2)"], lines["imaml (cg 5)"]
    assert to_rgba(cg2.get_color()) == to_rgba(cg5.get_color()) and cg2.get_linestyle() != cg5.get_linestyle()

    memory = pd.DataFrame([
        {"benchmark": "memory.transformer", "method": m, "seq": s, "metric": "peak_mib", "value": v * s,
         "unit": "MiB", "measured_by": "cpu_dispatch_tracker", "device_name": "cpu", "status": "ok",
         "seed": 0, "sweep": "seq", "d_model": 128}
        for m, v in (("maml", 3.0), ("fobmaml-sym", 0.5)) for s in (32, 64)
    ])
    memory_figures.draw(memory, tmp_path)
    (figure,) = [f for n, f in captured.items() if n.startswith("memory")]
    drawn = {line.get_label(): line for line in figure.axes[0].get_lines()}
    for method in ("maml", "fobmaml-sym"):
        assert to_rgba(drawn[method].get_color()) == to_rgba(lines[method].get_color())
        assert drawn[method].get_marker() == lines[method].get_marker()
        assert drawn[method].get_linestyle() == lines[method].get_linestyle()


def test_a_diverging_method_is_marked_and_does_not_swamp_the_linear_panel(captured, tmp_path: Path) -> None:
    rows = []
    for method, curve in (("fobmaml-sym", [10.0 / (t + 1) for t in range(6)]),
                          ("reptile", [10.0 * 100.0 ** t for t in range(6)])):
        for t, gap in enumerate(curve):
            for metric, value in (("suboptimality", gap), ("outer_loss", -5.0 + gap)):
                rows.append(_row(benchmark="gradcheck.outer_loss", method=method, inner_steps=10, iteration=t,
                                 nu=0.01, lam=2.0, metric=metric, value=value, f_star=-5.0))
    gradcheck_figures.draw(pd.DataFrame(rows), tmp_path)
    top, bottom = captured["gradcheck_outer_loss"].axes
    assert any("reptile" in name and "diverges" in name
               for name in (line.get_label() for line in top.get_lines()))
    low, high = bottom.get_ylim()
    assert high < 10 and low > -10  # clipped to the converging method and F*, not to 1e11
    assert all(float(t).is_integer() for t in bottom.get_xticks())
    assert "ν=0.01" in top.get_title() and "λ=2" in top.get_title()


def test_train_accuracy_has_integer_iteration_ticks(captured, tmp_path: Path) -> None:
    rows = []
    for method in ("fobmaml-sym", "maml"):
        for iteration, acc in ((0, 0.4), (1, 0.5), (2, 0.6), (3, 0.7)):
            for metric, value in (("eval_acc", acc), ("eval_acc_ci95", 0.02)):
                rows.append({"benchmark": "train.mnist1d", "method": method, "ways": 3, "shots": 5,
                             "queries": 10, "run_id": "r", "seed": 0, "iteration": iteration,
                             "metric": metric, "value": value, "device_name": "cpu"})
    train_figures.draw(pd.DataFrame(rows), tmp_path)
    (name,) = [n for n in captured if n.endswith("accuracy")]
    ax = captured[name].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    drawn = {line.get_label(): line for line in ax.get_lines()}
    assert drawn["fobmaml-sym"].get_marker() == common.METHOD_STYLES["fobmaml-sym"]["marker"]
