"""Quadratic gradcheck: error vs nu grid and auto, K in {5,20,100}, float32/float64."""
import sys, math, torch
from fobbench.estimators import EstimatorConfig, meta_gradient
from fobbench.inner import InnerConfig
from fobbench.problems.quadratic import make_quadratic, quadratic_loss, PARAM
torch.set_num_threads(1)
methods = sys.argv[1].split(",") if len(sys.argv) > 1 else ["fobmaml-sym"]
use_auto = len(sys.argv) > 2 and sys.argv[2] == "auto"
cond = float(sys.argv[3]) if len(sys.argv) > 3 else 25.0
p = make_quadratic(cond=cond)
print(f"quadratic cond={cond}")
lam = 2.0
lr = p.safe_lr(lam, 1.0)
truth = p.meta_gradient(p.theta0, lam)
grid = [10 ** (-5 + 0.5 * i) for i in range(11)]
for method in methods:
    print(f"## {method}  lr={lr:.4g}")
    print("| dtype | K | best fixed ν | its error | auto ν | auto error | ratio |")
    for dtype in (torch.float32, torch.float64):
        cast = lambda d: tuple(t.to(dtype) if t.is_floating_point() else t for t in d)
        s, q = cast(p.support), cast(p.query)
        theta = {PARAM: p.theta0.to(dtype)}
        for k in (5, 20, 100):
            errs = []
            for nu in grid + (["auto"] if use_auto else []):
                cfg = EstimatorConfig(inner=InnerConfig(steps=k, lr=lr, lam=lam), nu=nu)
                r = meta_gradient(method, theta, quadratic_loss, s, q, cfg, batching="vmap")
                g = r.grad[PARAM].double()
                errs.append((float((g - truth).norm() / truth.norm()), getattr(r, "nu", nu)))
            fixed = errs[:len(grid)]
            b = min(range(len(grid)), key=lambda i: fixed[i][0])
            line = f"| {str(dtype)[6:]} | {k} | {grid[b]:.0e} | {fixed[b][0]:.2e} |"
            if use_auto:
                a = errs[-1]
                line += f" {float(a[1]):.2e} | {a[0]:.2e} | {a[0]/fixed[b][0]:.2f} |"
            print(line, " ".join(f"{e:.1e}" for e, _ in fixed), flush=True)
