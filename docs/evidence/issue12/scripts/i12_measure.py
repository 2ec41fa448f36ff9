"""float32 FO-B-MAML sym error vs a float64 implicit truth, tanh MLP and smooth Conv1D."""
import sys, math, torch
from torch import nn
sys.path.insert(0, "/work/wt12/tests")
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

def conv_problem(seed=0):
    torch.manual_seed(seed)
    layers, c = [], 1
    for _ in range(3):
        layers += [nn.Conv1d(c, 16, 3, padding=1), nn.BatchNorm1d(16, track_running_stats=False), nn.Tanh(), nn.AvgPool1d(2)]
        c = 16
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 5, 3)).double()
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(1, 15, 1, 40, generator=g, dtype=torch.float64); ys = torch.arange(3).repeat(5)[None]
    xq = torch.randn(1, 30, 1, 40, generator=g, dtype=torch.float64); yq = torch.arange(3).repeat(10)[None]
    return model, (xs, ys), (xq, yq)

def run(name, problem, lam, lr, K, nus, batchings=("loop", "vmap")):
    model, s, q = problem()
    loss = classification_loss(model)
    theta64 = {n: p.detach() for n, p in model.named_parameters()}
    truth = implicit_truth(theta64, loss, tuple(t[0] for t in s), tuple(t[0] for t in q), lam, lr)
    model32 = model.float(); loss32 = classification_loss(model32)
    theta32 = {n: p.float() for n, p in theta64.items()}
    s32 = tuple(t.float() if t.is_floating_point() else t for t in s)
    q32 = tuple(t.float() if t.is_floating_point() else t for t in q)
    truth32 = {n: v.float() for n, v in truth.items()}
    print(f"## {name} lam={lam} lr={lr} K={K} |theta|={math.sqrt(sum(float((p**2).sum()) for p in theta64.values())):.2f}")
    print("| nu | " + " | ".join(f"f32 {b}" for b in batchings) + " | f64 loop |")
    for nu in nus:
        cfg = EstimatorConfig(inner=InnerConfig(steps=K, lr=lr, lam=lam), nu=nu)
        errs = []
        for b in batchings:
            est = meta_gradient("fobmaml-sym", theta32, loss32, s32, q32, cfg, batching=b).grad
            errs.append(relative_error({n: v.double() for n, v in est.items()}, truth))
        model.double()
        e64 = relative_error(meta_gradient("fobmaml-sym", theta64, loss, s, q, cfg, batching="loop").grad, truth)
        model.float()
        print(f"| {nu:.0e} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {e64:.2e} |", flush=True)

which = sys.argv[1] if len(sys.argv) > 1 else "all"
nus = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4]
if which in ("all", "mlp"):
    run("tanh MLP", mlp_problem, 2.0, 0.1, 200, nus)
    run("tanh MLP", mlp_problem, 1e3, 9e-4, 200, [1e-1, 1e-2, 1e-3])
if which in ("all", "conv"):
    run("Conv1D tanh", conv_problem, 10.0, 0.02, 200, [1e-1, 1e-2, 1e-3, 1e-4])
    run("Conv1D tanh", conv_problem, 1e3, 9e-4, 200, [1e-1, 1e-3])
