"""Synthetic quadratic tasks with closed-form meta-gradients (paper App. D.1).

Each task ``i`` has a train loss f̂_i(φ) = ½ φᵀA_iφ + φᵀb_i and a test loss
f_i(φ) = ½ φᵀC_iφ + φᵀd_i. The paper's set-up is f_i = f̂_i (``distinct_test=False``, the
default); ``distinct_test=True`` draws a different test quadratic per task. Everything is
float64 and has a closed form:

- perturbed inner solution (10):  φ*_ν = (A + νC + λI)⁻¹ (λθ − b − νd)
- meta-gradient (7):              ∇F_i = λ (A + λI)⁻¹ (Cφ*_i + d)
- outer objective (5):            F(θ) = mean_i f_i(φ*_i(θ)), a quadratic in θ, so its
                                  minimiser θ* and minimum F* are closed forms too.

Defaults mirror App. A: every A_i has the spectrum log-spaced on [μ, μ·cond] = [2, 50]
(cond 25), so cond(A_i + λI) is ≈ 24 at λ = 0.1 and exactly 5 at λ = 10 (the paper reports
≈ 25 → 5), and each task's optimum lies at distance 3.25 from the evaluation point θ₀ = 0, so
the adaptation distance ‖φ*_i − θ₀‖ is ≈ 3.2 at λ = 0.1 and ≈ 1.8 at λ = 10 (paper ≈ 3.25 →
1.75). Task optima cluster around a common direction, so the meta-optimum θ* is away from θ₀
and meta-training has work to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fobbench.errors import FobbenchError
from fobbench.params import Data, Params

DTYPE = torch.float64
PARAM = "theta"
"""The one parameter name: the meta-parameters are ``{"theta": Tensor[dim]}``."""


def quadratic_loss(params: Params, data: Data) -> Tensor:
    """½ θᵀAθ + θᵀb for ``data = (A, b)`` (one task; vmappable over a leading task axis)."""
    a, b = data
    theta = params[PARAM]
    return 0.5 * theta @ (a @ theta) + theta @ b


def _rotations(tasks: int, dim: int, generator: torch.Generator) -> Tensor:
    """Haar-random orthogonal matrices (QR of a Gaussian matrix with the sign fix)."""
    gauss = torch.randn((tasks, dim, dim), generator=generator, dtype=DTYPE)
    q, r = torch.linalg.qr(gauss)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    return q * signs.unsqueeze(-2)


@dataclass(frozen=True)
class QuadraticTasks:
    """A fixed set of quadratic tasks and their closed forms.

    Attributes:
        train_a, train_b: A_i (tasks, dim, dim) and b_i (tasks, dim) of the train losses f̂_i.
        test_a, test_b: C_i and d_i of the test losses f_i (equal to A_i, b_i by default).
        theta0: the evaluation point / meta-training start θ₀ (zeros, shape (dim,)).
        settings: what generated the tasks (dim, tasks, cond, mu, distance, spread,
            distinct_test), for CSV rows and config hashes.
    """

    train_a: Tensor
    train_b: Tensor
    test_a: Tensor
    test_b: Tensor
    theta0: Tensor
    settings: dict[str, object]

    @property
    def dim(self) -> int:
        """Number of meta-parameters."""
        return int(self.theta0.numel())

    @property
    def tasks(self) -> int:
        """Number of tasks."""
        return int(self.train_a.shape[0])

    @property
    def support(self) -> Data:
        """Train-loss data ``(A, b)`` with a leading task axis, for the estimators."""
        return (self.train_a, self.train_b)

    @property
    def query(self) -> Data:
        """Test-loss data ``(C, d)`` with a leading task axis, for the estimators."""
        return (self.test_a, self.test_b)

    def params(self, theta: Tensor | None = None) -> Params:
        """``{"theta": θ}`` (θ₀ by default), the parameter dict the estimators take."""
        return {PARAM: (self.theta0 if theta is None else theta).clone()}

    def _eye(self) -> Tensor:
        return torch.eye(self.dim, dtype=DTYPE)

    def solution(self, theta: Tensor, lam: float, nu: float = 0.0) -> Tensor:
        """φ*_ν(θ) of every task, shape (tasks, dim): eq. (10) in closed form."""
        matrix = self.train_a + nu * self.test_a + lam * self._eye()
        rhs = lam * theta - self.train_b - nu * self.test_b
        return torch.linalg.solve(matrix, rhs.unsqueeze(-1)).squeeze(-1)

    def task_gradients(self, theta: Tensor, lam: float) -> Tensor:
        """∇F_i(θ) of every task, shape (tasks, dim): eq. (7) in closed form."""
        phi = self.solution(theta, lam)
        test_grad = (self.test_a @ phi.unsqueeze(-1)).squeeze(-1) + self.test_b
        matrix = self.train_a + lam * self._eye()
        return lam * torch.linalg.solve(matrix, test_grad.unsqueeze(-1)).squeeze(-1)

    def meta_gradient(self, theta: Tensor, lam: float) -> Tensor:
        """∇F(θ) = mean_i ∇F_i(θ), shape (dim,)."""
        return self.task_gradients(theta, lam).mean(dim=0)

    def outer_loss(self, theta: Tensor, lam: float) -> float:
        """F(θ) = mean_i f_i(φ*_i(θ))."""
        phi = self.solution(theta, lam)
        values = 0.5 * torch.einsum("ti,tij,tj->t", phi, self.test_a, phi) + (phi * self.test_b).sum(-1)
        return float(values.mean())

    def outer_hessian(self, lam: float) -> Tensor:
        """∇²F = mean_i λ² M_i C_i M_i with M_i = (A_i + λI)⁻¹ (F is quadratic in θ)."""
        m = torch.linalg.inv(self.train_a + lam * self._eye())
        return (lam**2 * m @ self.test_a @ m).mean(dim=0)

    def optimum(self, lam: float) -> tuple[Tensor, float]:
        """The meta-optimum θ* = argmin F and F* = F(θ*), in closed form."""
        hessian = self.outer_hessian(lam)
        gradient_at_zero = self.meta_gradient(torch.zeros(self.dim, dtype=DTYPE), lam)
        theta_star = -torch.linalg.solve(hessian, gradient_at_zero)
        return theta_star, self.outer_loss(theta_star, lam)

    def outer_smoothness(self, lam: float) -> float:
        """L_F, the largest eigenvalue of ∇²F (1/L_F is a safe outer GD step)."""
        return float(torch.linalg.eigvalsh(self.outer_hessian(lam)).max())

    def inner_eigenvalues(self, lam: float, nu: float) -> Tensor:
        """Eigenvalues of the inner Hessian A_i + νC_i + λI, shape (tasks, dim)."""
        matrix = self.train_a + nu * self.test_a + lam * self._eye()
        return torch.linalg.eigvalsh(0.5 * (matrix + matrix.transpose(-1, -2)))

    def curvature(self) -> tuple[float, float]:
        """(L_max, L_test_max): largest eigenvalue of any A_i and of any C_i."""
        return (float(torch.linalg.eigvalsh(self.train_a).max()),
                float(torch.linalg.eigvalsh(self.test_a).max()))

    def safe_lr(self, lam: float, nu_max: float) -> float:
        """α = 1/(L_max + |ν|·L_test_max + λ): one step size safe for every ν with |ν| ≤ nu_max.

        It bounds the inner Hessian's largest eigenvalue for all perturbations used, so plain
        GD never overshoots (for f = f̂ this is 1/(L_max(1 + |ν|) + λ)).
        """
        train_max, test_max = self.curvature()
        return 1.0 / (train_max + abs(nu_max) * test_max + lam)

    def contraction(self, lam: float, lr: float, nus: tuple[float, ...] = (0.0,)) -> float:
        """The largest GD contraction factor max|1 − α·eig| over tasks and the given ν.

        A value ≥ 1 means plain GD does not converge on some perturbed problem (e.g. −ν with
        ν·L_test above the train curvature + λ).
        """
        return max(float((1 - lr * self.inner_eigenvalues(lam, nu)).abs().max()) for nu in nus)

    def steps_for(self, lam: float, lr: float, tolerance: float, nus: tuple[float, ...] = (0.0,)) -> int:
        """Inner GD steps K that shrink the initial error by ``tolerance`` (ρ^K ≤ tolerance)."""
        rho = self.contraction(lam, lr, nus)
        if rho >= 1:
            raise FobbenchError(
                f"inner GD does not converge at lambda={lam}, lr={lr:g} (contraction {rho:.3g} >= 1)"
            )
        return max(1, math.ceil(math.log(tolerance) / math.log(rho)))

    def unrolled(self, theta: Tensor, lam: float, lr: float, steps: int, nu: float = 0.0) -> Tensor:
        """φ_K of K GD steps from θ, in closed form: φ*_ν + (I − αH_ν)^K (θ − φ*_ν)."""
        matrix = self.train_a + nu * self.test_a + lam * self._eye()
        phi_star = self.solution(theta, lam, nu)
        power = torch.linalg.matrix_power(self._eye() - lr * matrix, steps)
        return phi_star + (power @ (theta - phi_star).unsqueeze(-1)).squeeze(-1)

    def inner_precision(self, lam: float, lr: float, steps: int, nu: float = 0.0) -> float:
        """δ = max_i ‖φ_K − φ*_ν‖ at θ₀: how far K GD steps are from the exact inner solution."""
        error = self.unrolled(self.theta0, lam, lr, steps, nu) - self.solution(self.theta0, lam, nu)
        return float(error.norm(dim=-1).max())

    def condition_numbers(self, lam: float) -> Tensor:
        """cond(A_i + λI) of every task (the inner problem's condition number)."""
        eig = self.inner_eigenvalues(lam, 0.0)
        return eig[:, -1] / eig[:, 0]

    def adaptation_distances(self, lam: float, theta: Tensor | None = None) -> Tensor:
        """‖φ*_i(θ) − θ‖ of every task (θ₀ by default)."""
        theta = self.theta0 if theta is None else theta
        return (self.solution(theta, lam) - theta).norm(dim=-1)


def make_quadratic(
    dim: int = 20,
    tasks: int = 10,
    cond: float = 25.0,
    mu: float = 2.0,
    distance: float = 3.25,
    spread: float = 0.5,
    distinct_test: bool = False,
    seed: int = 0,
) -> QuadraticTasks:
    """Draw quadratic tasks.

    Args:
        dim: number of meta-parameters d (default 20).
        tasks: number of tasks M (default 10).
        cond: condition number of every A_i (default 25): eigenvalues log-spaced on [μ, μ·cond].
        mu: smallest eigenvalue μ of every A_i (default 2; so L = 50 by default).
        distance: ‖c_i − θ₀‖ of every task optimum c_i = argmin f̂_i (default 3.25, App. A).
        spread: angular spread of the task optima around their common direction
            (default 0.5; 0 makes all tasks share one optimum).
        distinct_test: draw f_i ≠ f̂_i: the same spectrum under a fresh rotation, with the test
            optimum moved from c_i by ``spread·distance·ξ/√d``, ξ ~ N(0, I) (default False:
            f_i = f̂_i as in the paper).
        seed: seeds the rotations and optima.
    """
    if not isinstance(dim, int) or dim < 1:
        raise FobbenchError(f"--dim must be an integer >= 1 (got {dim})")
    if not isinstance(tasks, int) or tasks < 1:
        raise FobbenchError(f"--tasks must be an integer >= 1 (got {tasks})")
    if not (math.isfinite(cond) and cond >= 1):
        raise FobbenchError(f"--cond must be >= 1 (got {cond})")
    if not (math.isfinite(mu) and mu > 0):
        raise FobbenchError(f"mu must be > 0 (got {mu})")
    generator = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(math.log10(mu), math.log10(mu * cond), dim, dtype=DTYPE)
    if dim == 1:
        spectrum = torch.tensor([mu], dtype=DTYPE)

    def quadratics(optima: Tensor) -> tuple[Tensor, Tensor]:
        q = _rotations(tasks, dim, generator)
        a = q @ torch.diag_embed(spectrum.expand(tasks, dim)) @ q.transpose(-1, -2)
        a = 0.5 * (a + a.transpose(-1, -2))
        b = -(a @ optima.unsqueeze(-1)).squeeze(-1)
        return a, b

    centre = torch.randn(dim, generator=generator, dtype=DTYPE)
    centre = centre / centre.norm()
    noise = torch.randn((tasks, dim), generator=generator, dtype=DTYPE) / math.sqrt(dim)
    directions = centre + spread * noise
    optima = distance * directions / directions.norm(dim=-1, keepdim=True)
    train_a, train_b = quadratics(optima)
    if distinct_test:
        shift = torch.randn((tasks, dim), generator=generator, dtype=DTYPE) / math.sqrt(dim)
        test_a, test_b = quadratics(optima + spread * distance * shift)
    else:
        test_a, test_b = train_a, train_b
    settings = {"dim": dim, "tasks": tasks, "cond": float(cond), "mu": float(mu),
                "distance": float(distance), "spread": float(spread), "distinct_test": distinct_test}
    return QuadraticTasks(train_a, train_b, test_a, test_b, torch.zeros(dim, dtype=DTYPE), settings)
