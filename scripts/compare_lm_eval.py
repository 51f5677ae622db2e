#!/usr/bin/env python3
"""Compare `lors eval --samples` with lm-evaluation-harness's `--log_samples` output, item by
item: every choice's log-likelihood to a relative tolerance, and acc / acc_norm identical.

Usage: compare_lm_eval.py LORS_SAMPLES.jsonl LM_EVAL_OUTPUT_DIR [--rtol 1e-4] [--prefix lors_check_]
Exit status 1 on any disagreement.

       compare_lm_eval.py --dump-reference OUT.jsonl LM_EVAL_OUTPUT_DIR
writes lm-eval's per-item log-likelihoods, acc and acc_norm as JSON Lines (the reference file
the Rust tests compare against, tests/fixtures/lm_eval_stories260K.jsonl).
"""
import argparse
import json
import os
import sys


def lm_eval_samples(out_dir, prefix):
    """{task: {doc_id: sample}} from the newest samples file of each task."""
    found = {}
    # os.walk, not glob: lm-eval names the folder after the model path, e.g. `..__shared__...`,
    # which glob would skip as hidden.
    paths = [os.path.join(d, f) for d, _, files in os.walk(out_dir) for f in files
             if f.startswith("samples_") and f.endswith(".jsonl")]
    for path in sorted(paths):
        name = os.path.basename(path)[len("samples_"):].rsplit("_", 1)[0]
        task = name[len(prefix):] if name.startswith(prefix) else name
        with open(path) as f:
            found[task] = {s["doc_id"]: s for s in map(json.loads, f)}
    return found


def lls_of(sample):
    """The log-likelihood of each choice (`filtered_resps` holds `[ll, is_greedy]` pairs)."""
    return [float(r[0][0] if isinstance(r[0], list) else r[0]) for r in sample["filtered_resps"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lors_samples", nargs="?")
    ap.add_argument("lm_eval_dir")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--prefix", default="lors_check_")
    ap.add_argument("--dump-reference")
    args = ap.parse_args()
    reference = lm_eval_samples(args.lm_eval_dir, args.prefix)
    if args.dump_reference:
        with open(args.dump_reference, "w") as f:
            for task in sorted(reference):
                for doc, s in sorted(reference[task].items()):
                    row = {"task": task, "doc": doc, "loglikelihoods": lls_of(s), "acc": s["acc"]}
                    if "acc_norm" in s:
                        row["acc_norm"] = s["acc_norm"]
                    f.write(json.dumps(row) + "\n")
        return
    ours = {}
    with open(args.lors_samples) as f:
        for row in map(json.loads, f):
            ours.setdefault(row["task"], {})[row["doc"]] = row
    failures = 0
    for task in sorted(ours):
        if task not in reference:
            print(f"{task}: no lm-eval samples")
            failures += 1
            continue
        ref = reference[task]
        worst, acc_diff, norm_diff, n_lls = 0.0, 0, 0, 0
        for doc, row in ours[task].items():
            s = ref[doc]
            for a, b in zip(row["loglikelihoods"], lls_of(s), strict=True):
                worst = max(worst, abs(a - b) / max(abs(b), 1e-30))
                n_lls += 1
            acc_diff += int(float(row["pred"] == row["gold"]) != s["acc"])
            if "acc_norm" in s:
                norm_diff += int(float(row["pred_norm"] == row["gold"]) != s["acc_norm"])
        ok = worst <= args.rtol and acc_diff == 0 and norm_diff == 0 and len(ref) == len(ours[task])
        failures += not ok
        acc = sum(r["pred"] == r["gold"] for r in ours[task].values()) / len(ours[task])
        print(f"{task:14} items {len(ours[task]):4} (lm-eval {len(ref)})  log-likelihoods "
              f"{n_lls:4}, max rel diff {worst:.2e}  acc {acc:.4f}  acc differs on {acc_diff}, "
              f"acc_norm on {norm_diff}  {'OK' if ok else 'MISMATCH'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
