"""Inner-objective protocols: `published` runs MAML, FO-MAML, Reptile on f̂ alone."""

from __future__ import annotations

import pytest
import torch
from quadratic_loss import quadratic

from fobbench.errors import FobbenchError
from fobbench.estimators import REGISTRY, EstimatorConfig, meta_gradient, method_config
from fobbench.inner import InnerConfig


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile"])
def test_published_protocol_adapts_plain_methods_on_the_train_loss_alone(method: str) -> None:
    """Under `published`, K GD steps on f̂ alone: φ_K = θ − Σ α∇f̂ in closed form for a
    quadratic, so FO-MAML is A φ_K + b and Reptile (θ − φ_K)/(Kα); MAML equals the proximal
    protocol's MAML at λ = 0."""
    loss, theta, a, b = quadratic(4)
    k, lr = 3, 0.1
    config = EstimatorConfig(inner=InnerConfig(steps=k, lr=lr, lam=2.0), inner_protocol="published")
    got = meta_gradient(method, theta, loss, (a[None], b[None]), (a[None], b[None]), config).grad["x"]
    phi, jac = theta["x"].clone(), torch.eye(4, dtype=torch.float64)
    for _ in range(k):
        phi = phi - lr * (a @ phi + b)
        jac = (torch.eye(4, dtype=torch.float64) - lr * a) @ jac
    expected = {"fomaml": a @ phi + b, "reptile": (theta["x"] - phi) / (k * lr),
                "maml": jac.T @ (a @ phi + b)}[method]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    proximal = meta_gradient(method, theta, loss, (a[None], b[None]), (a[None], b[None]),
                             EstimatorConfig(inner=InnerConfig(steps=k, lr=lr, lam=2.0))).grad["x"]
    assert float((proximal - got).norm()) > 1e-3  # the proximal protocol is a different problem


@pytest.mark.parametrize("method", ["fobmaml-sym", "fobmaml-forward", "fobmaml-richardson", "imaml"])
def test_methods_that_need_lambda_keep_it_and_refuse_zero(method: str) -> None:
    estimator = REGISTRY[method]
    config = EstimatorConfig(inner=InnerConfig(lam=2.0), inner_protocol="published")
    assert method_config(estimator, config).inner.lam == 2.0
    with pytest.raises(FobbenchError, match=r"--lam \(λ\) must be > 0") as error:
        method_config(estimator, EstimatorConfig(inner=InnerConfig(lam=0.0)))
    assert "\n" not in str(error.value)


def test_unknown_protocol_is_a_one_line_error() -> None:
    with pytest.raises(FobbenchError, match="--inner-protocol"):
        EstimatorConfig(inner_protocol="plain")


def test_the_protocol_split_is_a_registry_fact() -> None:
    """Only the methods published without a proximal term drop λ; every FO-B-MAML variant
    (Richardson included) and iMAML keep it."""
    plain = {name for name, e in REGISTRY.items() if not e.proximal}
    assert plain == {"maml", "fomaml", "reptile", "esmaml"}


@pytest.mark.parametrize(("method", "dtype", "expected"), [
    ("fobmaml-sym", torch.float32, 8.1e-3), ("fobmaml-forward", torch.float32, 6.0e-4),
    ("fobmaml-sym", torch.float64, 1.0e-5), ("fobmaml-forward", torch.float64, 2.6e-8),
    ("fobmaml-richardson", torch.float32, 7.5e-2), ("fobmaml-richardson", torch.float64, 1.35e-3),
])
def test_nu_auto_follows_each_methods_registered_bias_order(method: str, dtype: torch.dtype,
                                                            expected: float) -> None:
    """ν = (eps/(p·a))^{1/(p+1)}, p = the registered ``theory_nu`` (1, 2, 4), a = (1/(1+λ))^p."""
    config = EstimatorConfig(inner=InnerConfig(lam=2.0), nu="auto")
    nu = REGISTRY[method].nu(config, dtype)
    assert nu == pytest.approx(expected, rel=0.02)
    assert REGISTRY["maml"].nu(config, dtype) is None


def test_nu_auto_keeps_the_farthest_perturbation_inside_the_cap() -> None:
    """At a huge λ the rule hits its cap: ν ≤ 0.5 for sym, 2ν ≤ 0.5 for Richardson (±2ν)."""
    config = EstimatorConfig(inner=InnerConfig(lam=1e6), nu="auto")
    assert REGISTRY["fobmaml-sym"].nu(config, torch.float32) == 0.5
    assert REGISTRY["fobmaml-richardson"].nu(config, torch.float32) == 0.25


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_richardson_with_nu_auto_runs_at_the_reported_nu(batching: str) -> None:
    """``nu="auto"`` gives the same estimate as that ν passed explicitly, and MetaGradient
    reports it."""
    loss, theta, a, b = quadratic(4)
    data = (a[None], b[None])
    auto = meta_gradient("fobmaml-richardson", theta, loss, data, data,
                         EstimatorConfig(inner=InnerConfig(steps=4, lr=0.1), nu="auto"), batching=batching)
    fixed = meta_gradient("fobmaml-richardson", theta, loss, data, data,
                          EstimatorConfig(inner=InnerConfig(steps=4, lr=0.1), nu=auto.nu), batching=batching)
    g = a @ theta["x"] + b
    curvature = float((a @ g).norm() / g.norm())  # the secant of f̂ along one GD step, by hand
    flatten = (curvature / (2.0 + curvature)) ** 4  # a = (L̂/(λ + L̂))^p, λ = 2, p = 4
    expected = min(0.25, (torch.finfo(torch.float64).eps / (4 * flatten)) ** (1 / 5))
    assert auto.nu == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(auto.grad["x"], fixed.grad["x"], rtol=0, atol=0)


def test_train_takes_the_protocol_and_nu_auto_and_records_them(cli, tmp_path, monkeypatch) -> None:
    """Both options come from train's one shared declaration: the CSV holds the protocol
    column, each method's own λ (0 for FO-MAML under published) and the ν FO-B-MAML used."""
    from fobbench.results import read_results

    monkeypatch.setenv("FOBBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run.csv"
    code, _, stderr = cli("train", "mnist1d", "--methods", "fobmaml-sym,fomaml",
                          "--inner-protocol", "published", "--nu", "auto", "--iterations", "2",
                          "--meta-batch", "2", "--eval-every", "2",
                          "--eval-tasks", "4", "--num-samples", "5000", "--threads", "1", "--quiet",
                          "--no-plot", "--out", str(out))
    assert code == 0, stderr
    frame = read_results(out)
    assert set(frame["inner_protocol"]) == {"published"}
    assert frame.groupby("method")["lam"].agg(set).to_dict() == {"fobmaml-sym": {2.0}, "fomaml": {0.0}}
    used = frame[frame["metric"] == "nu_used"]
    assert set(used["method"]) == {"fobmaml-sym"} and set(used["measured_by"]) == {"auto_rule"}
    assert float(used["value"].iloc[0]) == pytest.approx(8.1e-3, rel=0.02)  # float32 Conv1D
    for command in ("mnist1d", "omniglot"):
        code, stdout, _ = cli("train", command, "--help")
        assert "--inner-protocol" in stdout and "auto" in stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--nu", "often"], "--nu must be a non-zero number or 'auto'"),
    (["--inner-protocol", "plain"], "--inner-protocol: unknown 'plain'"),
    (["--lam", "0", "--method", "fobmaml-richardson"], "--lam (λ) must be > 0 for fobmaml-richardson"),
])
def test_train_option_errors_are_one_line(cli, args, message) -> None:
    code, _, stderr = cli("train", "mnist1d", *args, "--iterations", "1", "--quiet", "--no-plot")
    assert code == 2
    assert message in stderr and "\n" not in stderr.strip()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradcheck_nu_auto_is_within_2x_of_the_best_grid_nu(dtype: str, tmp_path) -> None:
    """The issue's criterion, measured by the tool itself: on gradcheck's quadratic, for the
    symmetric and forward estimators at K ∈ {5, 20, 100}, auto's error ≤ 2× the least error of
    the 11-point ν grid 1e-5..1 (measured ratios ≤ 1.63). Without the solve-error term the
    forward estimator is 2.7–4.8× off at K = 5 and 20, so this can fail."""
    from fobbench.experiments import gradcheck as experiment
    from fobbench.experiments.gradcheck.summaries import auto_table

    config = experiment.GradcheckConfig(experiments=("error_vs_nu",),
                                        methods=("fobmaml-forward", "fobmaml-sym"),
                                        nu="auto", nu_ks=(5, 20, 100), dtype=dtype)
    table = auto_table(experiment.run(config, tmp_path / "run").frame())
    assert len(table) == 6 and set(table["K"]) == {5, 20, 100}
    assert (table["ratio"] <= 2.0).all(), table.to_string()
    forward = table[table["method"] == "fobmaml-forward"].set_index("K")["ν auto"]
    assert forward[5] == forward[20] == 0.5 and 0.01 < forward[100] < 0.05  # ν follows ε: large at small K


def test_forward_nu_auto_follows_the_measured_solve_error_and_curvature() -> None:
    """The forward estimator's ν is max(ν_round, 3ε/a) with a = L̂/(λ + L̂), ε the unperturbed
    K-step GD solve's relative residual and L̂ the secant curvature of f̂ along one GD step, both
    computed here independently, by hand, for one quadratic task; the symmetric estimator's ν
    does not depend on K (it has no unperturbed solve)."""
    loss, theta, a, b = quadratic(4)
    data = (a[None], b[None])
    lam, lr = 2.0, 0.05
    g = a @ theta["x"] + b
    curvature = float((a @ g).norm() / g.norm())
    flatten = curvature / (lam + curvature)
    eps64 = torch.finfo(torch.float64).eps
    for k in (40, 80):
        delta = torch.zeros(4, dtype=torch.float64)
        for _ in range(k):
            delta = delta - lr * (a @ (theta["x"] + delta) + b + lam * delta)
        residual = a @ (theta["x"] + delta) + b + lam * delta
        eps = float(residual.norm() / (lam * delta.norm()))
        config = EstimatorConfig(inner=InnerConfig(steps=k, lr=lr, lam=lam), nu="auto")
        expected = min(0.5, max(3 * eps / flatten, (eps64 / flatten) ** 0.5))
        assert expected > 1e-6  # the solve-error term decides, not rounding
        for batching in ("vmap", "loop"):
            got = meta_gradient("fobmaml-forward", theta, loss, data, data, config, batching=batching).nu
            assert got == pytest.approx(expected, rel=1e-6)
        sym = meta_gradient("fobmaml-sym", theta, loss, data, data, config).nu
        assert sym == pytest.approx((eps64 / (2 * flatten**2)) ** (1 / 3), rel=1e-9)


def test_gradcheck_cli_nu_auto_records_nu_used_and_refuses_a_bad_dtype(cli, tmp_path) -> None:
    from fobbench.results import read_results

    code, stdout, stderr = cli("gradcheck", "--experiments", "error_vs_k,error_vs_nu", "--methods",
                               "fobmaml-forward,fomaml", "--nu", "auto", "--inner-steps", "5",
                               "--nu-inner-steps", "5", "--nu-grid", "1e-3..1@4", "--dtype", "float32",
                               "--no-plot", "--quiet", "--out", str(tmp_path / "g"))
    assert code == 0, stderr
    by_k = read_results(tmp_path / "g" / "error_vs_k.csv")
    assert set(by_k[by_k["metric"] == "nu_used"]["method"]) == {"fobmaml-forward"}
    by_nu = read_results(tmp_path / "g" / "error_vs_nu.csv")
    assert sorted(set(by_nu["nu"].astype(str)))[-1] == "auto" and (by_nu["metric"] == "nu_used").sum() == 1
    code, _, stderr = cli("gradcheck", "--dtype", "float16", "--quiet", "--out", str(tmp_path / "h"))
    assert code != 0 and "--dtype: unknown 'float16'" in stderr and "Traceback" not in stderr
