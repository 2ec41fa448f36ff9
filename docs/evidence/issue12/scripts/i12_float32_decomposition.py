"""Item 2: where does float32 FO-B-MAML sym's floor come from? (tanh MLP, λ=2, K=200, lr=0.1)

Three GD inner solves on displacement Δ (stored float32), differing only in how ∇f̂/∇f is evaluated:
  full32   float32 gradient at fl32(θ+Δ)              (what fobbench does)
  pt_only  float64 gradient at fl32(θ+Δ), rounded to float32   -> (a) evaluation-point rounding only
  exact    float64 gradient at θ+Δ (exact in float64), rounded to float32 -> neither (a) nor (b)
Plus a single-evaluation decomposition at φ_K.
"""
import sys, math, torch
from torch import nn
sys.path.insert(0, "tests")  # run from the repository root
from implicit_truth import implicit_truth
from fobbench.estimators import EstimatorConfig, meta_gradient
from fobbench.inner import InnerConfig
from fobbench.params import classification_loss, relative_error
torch.set_num_threads(1)

def mlp_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(1, 15, 8, generator=g, dtype=torch.float64); ys = torch.randint(0, 3, (1, 15), generator=g)
    xq = torch.randn(1, 30, 8, generator=g, dtype=torch.float64); yq = torch.randint(0, 3, (1, 30), generator=g)
    return model, (xs, ys), (xq, yq)

lam, lr, K = 2.0, 0.1, 200
model, s, q = mlp_problem()
loss = classification_loss(model)
names = [n for n, _ in model.named_parameters()]
th64 = {n: p.detach().clone() for n, p in model.named_parameters()}
s1 = tuple(t[0] for t in s); q1 = tuple(t[0] for t in q)
truth = implicit_truth(th64, loss, s1, q1, lam, lr)
th32 = {n: v.float() for n, v in th64.items()}
thq = {n: v.double() for n, v in th32.items()}   # θ rounded to float32, held in float64 (exact)
f32 = lambda d: tuple(t.float() if t.is_floating_point() else t for t in d)
s32, q32 = f32(s1), f32(q1)

def grad64(phi, v):   # float64 objective gradient (data term) at phi (float64)
    g = torch.func.grad(loss)(phi, s1)
    if v: gq = torch.func.grad(loss)(phi, q1); g = {n: g[n] + v * gq[n] for n in g}
    return g
def grad32(phi, v):
    g = torch.func.grad(loss)(phi, s32)
    if v: gq = torch.func.grad(loss)(phi, q32); g = {n: g[n] + v * gq[n] for n in g}
    return g

def solve(v, route):
    d = {n: torch.zeros_like(p) for n, p in th32.items()}
    for _ in range(K):
        if route == "full32":
            model.float(); g = grad32({n: th32[n] + d[n] for n in d}, v)
        elif route == "pt_only":
            model.double(); g = grad64({n: (th32[n] + d[n]).double() for n in d}, v)
        else:
            model.double(); g = grad64({n: thq[n] + d[n].double() for n in d}, v)
        d = {n: d[n] - lr * (g[n].float() + lam * d[n]) for n in d}
    return d

def sym(nu, route):
    dp, dm = solve(nu, route), solve(-nu, route)
    return {n: (-lam / (2 * nu)) * (dp[n] - dm[n]).double() for n in dp}

print(f"|theta|={math.sqrt(sum(float((v**2).sum()) for v in th64.values())):.3f}")
# truth for θ rounded to float32 (the float32 methods start from fl32(θ)): both routes see the same θ values
truth_q = implicit_truth(thq, loss, s1, q1, lam, lr)
print(f"truth(θ) vs truth(fl32 θ): {relative_error(truth_q, truth):.2e}")
print(f"|∇F| = {math.sqrt(sum(float((v**2).sum()) for v in truth_q.values())):.3e}")
for nu in (1e-4, 1e-3, 3e-3, 1e-2):
    model.float()
    lib = meta_gradient("fobmaml-sym", th32, classification_loss(model), tuple(t[None] for t in s32), tuple(t[None] for t in q32),
                        EstimatorConfig(inner=InnerConfig(steps=K, lr=lr, lam=lam), nu=nu), batching="loop").grad
    row = [f"fobbench {relative_error({n: v.double() for n, v in lib.items()}, truth_q):.2e}"]
    for route in ("full32", "pt_only", "exact"):
        row.append(f"{route} {relative_error(sym(nu, route), truth_q):.2e}")
    print(f"nu={nu:.0e} sym error vs float64 truth: " + " | ".join(row), flush=True)

# one evaluation at φ_K of the unperturbed solve
d = solve(0.0, "exact")
model.double()
ge = grad64({n: thq[n] + d[n].double() for n in d}, 0.0)
gr = grad64({n: (th32[n] + d[n]).double() for n in d}, 0.0)
model.float(); g32 = grad32({n: th32[n] + d[n] for n in d}, 0.0)
nrm = lambda a: math.sqrt(sum(float((a[n].double()**2).sum()) for n in a))
diff = lambda a, b: nrm({n: a[n].double() - b[n].double() for n in a})
dn = nrm(d); gn = nrm(ge)
print(f"at phi_K: |Delta|={dn:.3e} |grad f̂|={gn:.3e} (λ|Δ|={lam*dn:.3e})")
print(f"  (a) point rounding  |G64(fl32 θ+Δ) − G64(θ+Δ)| = {diff(gr, ge):.3e}  ({diff(gr, ge)/gn:.2e} rel)")
print(f"  (b) intrinsic       |G32(fl32 θ+Δ) − G64(fl32 θ+Δ)| = {diff(g32, gr):.3e}  ({diff(g32, gr)/gn:.2e} rel)")
print(f"  eps32·|θ|={torch.finfo(torch.float32).eps*nrm(th32):.3e}  eps32·|grad|={torch.finfo(torch.float32).eps*gn:.3e}")
