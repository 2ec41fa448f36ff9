"""Time fobbench's answer to bad inputs and --help: exit code, traceback, message, torch, time.

Usage (from a checkout's root): python docs/evidence/issue13/bad_inputs.py [REPEATS [FILTER]] > table.md
Each case runs REPEATS times (median wall time and median CPU time of the child, user + sys: the
CPU time does not grow with other processes' load) with ``python -m fobbench`` and once more
under ``-X importtime`` to see whether torch was imported. PYTHONPATH is set to the current
folder. FILTER: only the cases whose command line contains it.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MISSING = "/nonexistent-fobbench/x"
CASES: list[list[str]] = [
    ["--version"],
    ["memory", "--seq", "32,"],
    ["memory", "--seq", ""],
    ["memory", "--arch", "nosuch"],
    ["memory", "--threads", "0"],
    ["memory", "--limit", "-5"],
    ["memory", "--methods", "exact"],
    ["memory", "--d-model", "100", "--seq", "128"],
    ["memory", "--nu", "0"],
    ["memory", "--resume", MISSING + ".csv"],
    ["gradcheck", "--lam", "-1"],
    ["gradcheck", "--nu", "0"],
    ["gradcheck", "--inner-steps", "5..1"],
    ["gradcheck", "--methods", "nosuch"],
    ["gradcheck", "--experiments", "bogus"],
    ["gradcheck", "--resume", MISSING],
    ["train", "mnist1d", "--methods", "exact"],
    ["train", "mnist1d", "--methods", "nosuch"],
    ["train", "mnist1d", "--nu", "abc"],
    ["train", "mnist1d", "--lam", "-1"],
    ["train", "mnist1d", "--outer", "nosuch"],
    ["train", "mnist1d", "--resume", MISSING + ".csv"],
    ["train", "omniglot", "--split", "nosuch"],
    ["speed", "--meta-batch", "0"],
    ["speed", "--methods", "exact"],
    ["speed", "--peers", "nosuch"],
    ["speed", "--format", "gif"],
    ["compare", MISSING, MISSING],
    ["compare", ".", ".", "--kind", "nosuch"],
    ["plot", MISSING],
    ["plot", ".", "--format", "gif"],
    ["info", "--bogus"],
    ["run", MISSING + ".toml"],
    ["run", "BADSUITE"],
]
HELP = [["compare"], ["gradcheck"], ["info"], ["memory"], ["plot"], ["run"], ["speed"],
        ["train", "mnist1d"], ["train", "omniglot"], ["train", "problem"]]


def run(args: list[str], importtime: bool = False) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """(the finished process, wall seconds, CPU seconds of the child)."""
    flags = ["-X", "importtime"] if importtime else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *flags, "-m", "fobbench", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, check=False, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    suite = Path(tempfile.mkdtemp()) / "bad.toml"
    suite.write_text('[[run]]\nname = "m"\ncommand = "memory"\n[run.options]\nseq = "32..1"\n')
    print(f"load average at the start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)\n")
    print("| command | exit | traceback | torch | stderr lines | first stderr line | median wall s "
          "| median CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES + [[*h, "--help"] for h in HELP]:
        if only not in " ".join(case):
            continue
        args = [str(suite) if a == "BADSUITE" else a for a in case]
        times, cpus, done = [], [], None
        for _ in range(repeats):
            done, seconds, cpu = run(args)
            times.append(seconds)
            cpus.append(cpu)
        traced, _, _ = run(args, importtime=True)
        torch = any(line.split("|")[-1].strip() == "torch" for line in traced.stderr.splitlines()
                    if line.startswith("import time:"))
        lines = done.stderr.strip().splitlines()
        shown = " ".join("BADSUITE" if a == str(suite) else a for a in args)
        first = (lines[0] if lines else (done.stdout.strip().splitlines() or [""])[0])[:110]
        print(f"| `fobbench {shown}` | {done.returncode} | {'yes' if 'Traceback' in done.stderr else 'no'} | "
              f"{'yes' if torch else 'no'} | {len(lines)} | {first.replace('|', '/')} | "
              f"{statistics.median(times):.2f} | {statistics.median(cpus):.2f} |", flush=True)


if __name__ == "__main__":
    main()
