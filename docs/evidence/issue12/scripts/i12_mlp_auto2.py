"""`--nu auto` (measured-curvature rule) for FO-B-MAML-sym on the tanh MLP of i12_measure.py,
against the fixed-ν table of i12_after_mlp.log. Run from the repository root."""
import sys
import torch
sys.path.insert(0, "tests"); sys.path.insert(0, "docs/evidence/issue12/scripts")
src = open("docs/evidence/issue12/scripts/i12_measure.py").read().split("which =")[0]
exec(src.replace('sys.path.insert(0, "/work/wt12/tests")', ""))
for lam, lr in ((2.0, 0.1), (1e3, 9e-4)):
    model, s, q = mlp_problem()
    loss = classification_loss(model)
    th = {n: p.detach() for n, p in model.named_parameters()}
    truth = implicit_truth(th, loss, tuple(t[0] for t in s), tuple(t[0] for t in q), lam, lr)
    for dtype in (torch.float32, torch.float64):
        model.to(dtype); l = classification_loss(model)
        thd = {n: p.to(dtype) for n, p in th.items()}
        sd = (s[0].to(dtype), s[1]); qd = (q[0].to(dtype), q[1])
        cfg = EstimatorConfig(inner=InnerConfig(steps=200, lr=lr, lam=lam), nu="auto")
        r = meta_gradient("fobmaml-sym", thd, l, sd, qd, cfg, batching="loop")
        print(f"| {lam} | {str(dtype)[6:]} | {r.nu:.2e} | {relative_error({n: v.double() for n, v in r.grad.items()}, truth):.2e} |", flush=True)
