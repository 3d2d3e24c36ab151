"""Run every benchmark script in benchmarks/ in sequence and print their ratio summaries.

Each script starts its own upstream and pgml-server and prints ratios against anchors measured
in the same run; this runner only sequences them (quick settings by default) and collects the
summaries at the end. The soak test is not a benchmark and is left out.

Usage: python benchmarks/run_all.py [--full] [--only forwarding,predict] [--skip train]
  --full   each script's own (long) defaults instead of the quick settings below
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"common", "run_all"}
EXCLUDED_PREFIXES = ("soak",)          # long-running stability tests, not benchmarks
ORDER = ["forwarding", "predict", "train", "train_interference"]
QUICK_ARGS = {
    "forwarding": ["--seconds", "5"],
    "predict": ["--rows", "200000", "--seconds", "2", "--plpython-rows", "10000"],
    "train": ["--rows", "200000"],
    "train_interference": ["--seconds", "5", "--train-rows", "100000"],
    "relational": ["--rows", "200000", "--rounds", "1", "--seconds", "1", "--latency-rounds", "3"],
}


def discover() -> list[str]:
    names = [p.stem for p in HERE.glob("*.py")
             if p.stem not in NOT_BENCHMARKS and not p.stem.startswith(EXCLUDED_PREFIXES) and not p.stem.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def summary_lines(output: str) -> list[str]:
    """The script's own summary section when it prints one, else its lines that carry a ratio."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower().startswith("summary"):
            return [x for x in lines[i + 1:] if x.strip()]
    return [x for x in lines if "×" in x or "MISSING" in x or "machine:" in x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--skip", default="")
    args = parser.parse_args()
    names = discover()
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    names = [n for n in names if n not in args.skip.split(",")]
    results: list[tuple[str, int, float, list[str]]] = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *([] if args.full else QUICK_ARGS.get(name, []))]
        print(f"\n===== {name}: {' '.join(cmd[1:])}  (load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})",
              flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        captured = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            captured.append(line)
        rc = proc.wait()
        results.append((name, rc, time.perf_counter() - t0, summary_lines("".join(captured))))

    print("\n===== summary of all benchmarks")
    for name, rc, elapsed, lines in results:
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{name} ({elapsed:.0f} s, {status})")
        for line in lines:
            print(f"  {line.strip()}")
    return 0 if all(rc == 0 for _, rc, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
