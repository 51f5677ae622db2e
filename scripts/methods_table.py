"""The Markdown table of scripts/methods.sh from its run directories and logs.

Usage: methods_table.py OUT_DIR NAME...   (rows in the order of NAME, per model)
"""
import json
import re
import sys
from pathlib import Path


def row(run_dir: Path) -> str:
    log = (run_dir.parent / f"{run_dir.name}.log").read_text()
    ppl = re.findall(r"perplexity ([0-9.]+) \(loss", log)
    kept = "identical" in log
    wall = re.findall(r"wall_s (\d+)", log)
    train = [json.loads(l) for l in (run_dir / "metrics.jsonl").open()]
    train = [r for r in train if r.get("kind") == "train"]
    seconds = train[-1]["elapsed_s"] if train else float("nan")
    peak = max(r["step_peak_bytes"] for r in train) / 2**20 if train else float("nan")
    return (
        f"| {run_dir.name} | {ppl[-1] if ppl else '-'} | {seconds:.0f} | "
        f"{wall[-1] if wall else '-'} | {peak:.0f} | {'yes' if kept else 'NO'} |"
    )


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2:]
    for model in sorted(p for p in out.iterdir() if p.is_dir()):
        print(f"\n### {model.name}\n")
        print("| run | valid ppl (merged) | train s | wall s | step peak MiB | zeros kept |")
        print("|---|---|---|---|---|---|")
        for name in names:
            if (model / name).is_dir():
                print(row(model / name))


if __name__ == "__main__":
    main()
