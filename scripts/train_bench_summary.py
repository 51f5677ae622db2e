#!/usr/bin/env python3
"""Summary of a scripts/train_bench.sh results file: per shape, each tool's median tokens/s
and memory over the rounds, and the median over rounds of each one's speed ratio to
transformers + PEFT without checkpointing measured in the same round (the machine's speed
drifts between rounds, so ratios within a round are what compare).

Usage: python scripts/train_bench_summary.py runs/train-bench/results-<time>.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict

MIB = 1 << 20


def label(r):
    if r["tool"] == "lors":
        return f"lors {r['policy']}"
    return "PEFT + checkpointing" if r["checkpointing"] else "PEFT"


def memory(r):
    if r["tool"] == "lors":
        return f"{r['step_peak_bytes'] / MIB:.0f} MiB step peak"
    return f"+{r['rss_growth_mib']:.0f} MiB RSS"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by = defaultdict(list)  # (shape, label) -> rows
    for r in rows:
        by[(r["shape"], label(r))].append(r)
    for shape in dict.fromkeys(r["shape"] for r in rows):
        base = {r["round"]: r["tokens_per_s"] for r in by[(shape, "PEFT")]}
        print(f"\n{shape}: tool, tokens/s per round, median, x PEFT (median of rounds), memory")
        for (s, name), runs in by.items():
            if s != shape:
                continue
            speeds = [r["tokens_per_s"] for r in runs]
            ratios = [r["tokens_per_s"] / base[r["round"]] for r in runs if r["round"] in base]
            ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
            print(f"  {name:22s} {' / '.join(f'{v:.0f}' for v in speeds):24s} "
                  f"{statistics.median(speeds):6.0f}  {ratio:6s} {memory(runs[-1])}")


if __name__ == "__main__":
    main()
