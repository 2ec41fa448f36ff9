import sys, pandas as pd
rows = []
for path in sys.argv[1:]:
    f = pd.read_csv(path)
    rows.append(f)
f = pd.concat(rows)
acc = f[f.metric == "eval_acc"].set_index(["method", "iteration"])["value"]
ci = f[f.metric == "eval_acc_ci95"].set_index(["method", "iteration"])["value"]
spi = f[f.metric == "sec_per_iter"].groupby("method")["value"].last()
lam = f.groupby("method")["lam"].first()
print("| method | λ | acc@0 | acc@100 | acc@300 | final (600) ± 95% | best (iter) | s/it |")
print("|---|---|---|---|---|---|---|---|")
order = ["fobmaml-sym", "maml", "fomaml", "reptile", "imaml"]
for m in [m for m in order if m in acc.index.get_level_values(0)]:
    a = acc[m]; c = ci[m]
    last = a.index.max()
    best = a.idxmax()
    g = lambda i: f"{a[i]:.3f}" if i in a.index else "–"
    print(f"| {m} | {lam[m]:g} | {g(0)} | {g(100)} | {g(300)} | {a[last]:.3f} ± {c[last]:.3f}" + ("" if last == 600 else f" (at {last})") + f" | {a[best]:.3f} ({best}) | {spi.get(m, float('nan')):.2f} |")
