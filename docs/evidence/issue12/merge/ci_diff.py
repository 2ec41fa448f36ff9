"""Every deterministic value of a CI run against the baseline, exactly (no tolerance): which
rows moved and by how much (timing and other noisy metrics are left out).

    python docs/evidence/issue12/merge/ci_diff.py results/baseline /tmp/m12_ci
"""

import sys
from pathlib import Path

import pandas as pd

from fobbench.results import read_results
from fobbench.results.compare import DETERMINISTIC, NON_POINT_COLUMNS, kind_of

base_dir, new_dir = Path(sys.argv[1]), Path(sys.argv[2])
out = []
for base_file in sorted(base_dir.rglob("*.csv")):
    new_file = new_dir / base_file.relative_to(base_dir)
    b, n = read_results(base_file), read_results(new_file)
    common = [c for c in b.columns if c in n.columns and c not in NON_POINT_COLUMNS]
    keys = ["benchmark", "method", *common, "metric", "seed"]
    only_new = sorted(set(n.columns) - set(b.columns))
    m = b.merge(n, on=keys, how="outer", suffixes=("_b", "_n"), indicator=True)
    measured_by = m["measured_by_b"].fillna(m["measured_by_n"])
    m = m[[kind_of(metric, how) == DETERMINISTIC for metric, how in zip(m["metric"], measured_by, strict=True)]]
    for _, row in m.iterrows():
        status = {"left_only": "base only", "right_only": "new only"}.get(row["_merge"], "")
        vb, vn = row.get("value_b"), row.get("value_n")
        if not status and vb == vn:
            continue
        if not status and pd.isna(vb) and pd.isna(vn):
            continue
        point = " ".join(f"{c}={row[c]}" for c in common if c not in ("problem", "split", "split_hash")
                         and not pd.isna(row[c]) and b[c].nunique() > 1)
        out.append({"file": str(base_file.relative_to(base_dir)), "method": row["method"], "point": point,
                    "metric": row["metric"], "base": vb, "new": vn,
                    "abs_diff": (vn - vb) if not status else float("nan"),
                    "rel_diff": (vn - vb) / abs(vb) if not status and vb else float("nan"),
                    "status": status or "differs", "new_columns": ",".join(only_new)})
    same = int(((m["_merge"] == "both") & (m["value_b"] == m["value_n"])).sum())
    print(f"{base_file.relative_to(base_dir)}: {len(m)} deterministic rows, {same} bit-identical;"
          f" columns only in new: {only_new or '-'}")
frame = pd.DataFrame(out)
pd.set_option("display.width", 250, "display.max_rows", 500, "display.max_colwidth", 60)
if not frame.empty:
    print(frame.drop(columns="new_columns").to_string(index=False))
    print("\nper file and metric: rows that differ, largest |relative difference|")
    frame["abs_rel"] = frame["rel_diff"].abs()
    print(frame.groupby(["file", "metric", "status"]).agg(rows=("abs_rel", "size"), max_abs_rel=("abs_rel", "max"))
          .to_string())
