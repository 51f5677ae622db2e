#!/usr/bin/env bash
# Two builds of lors give the same bits: the bundled demo and the quality profile of each
# method (stories260K-wanda-50, shortened to STEPS steps, evaluated and merged) are trained with
# BEFORE and AFTER, and every metrics row (train, eval, init, sparsity, task scores; less
# their timings and memory readings), every checkpoint's adapter and every merged weight file must be
# identical byte for byte. For refactors that must not change a result.
#
#   BEFORE=/path/to/old/lors AFTER=target/release/lors scripts/same_bits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BEFORE:?the lors binary before the change}"
AFTER=${AFTER:-target/release/lors}
STEPS=${STEPS:-40}
OUT=${OUT:-runs/same-bits}
rm -rf "$OUT" && mkdir -p "$OUT"
profile=profiles/stories-wanda50-lors.toml

train() { # build-name, binary, run-name, extra args...
  local build=$1 bin=$2 name=$3; shift 3
  local dir="$OUT/$build/$name"
  "$bin" train --run-dir "$dir" "$@" >"$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
}

for build in before after; do
  bin=$BEFORE; [ $build = after ] && bin=$AFTER
  mkdir -p "$OUT/$build"
  train $build "$bin" demo
  for method in lors lors-exact sqft spp lora; do
    init=gradient; [ $method = spp ] && init=standard
    train $build "$bin" $method --profile $profile \
      --set adapter.method=\"$method\" --set adapter.init=\"$init\" \
      --set train.max_steps=$STEPS --set train.eval_every=$((STEPS / 2)) \
      --set train.save_every=$STEPS --set train.merge_at_end=true
  done
done

python3 - "$OUT" <<'EOF'
import hashlib, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
VOLATILE = {"tokens_per_s", "elapsed_s", "live_bytes", "peak_bytes", "step_peak_bytes",
            "rss_bytes", "gpu", "seconds", "exchange"}
def strip(v):
    """`v` without timings and memory readings, at any depth (a task score's `seconds`)."""
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in VOLATILE}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
def rows(run):
    for line in (run / "metrics.jsonl").read_text().splitlines():
        yield json.dumps(strip(json.loads(line)), sort_keys=True)
def digests(run):
    files = sorted(p for p in run.rglob("*.safetensors"))
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
bad = 0
for run in sorted((out / "before").iterdir()):
    if not run.is_dir():
        continue
    after = out / "after" / run.name
    a, b = list(rows(run)), list(rows(after))
    same_rows = a == b
    da, db = digests(run), digests(after)
    same_files = da == db and len(da) > 0
    last = [json.loads(r) for r in a if json.loads(r).get("kind") == "eval"]
    loss = last[-1]["eval_loss"] if last else None
    print(f"{run.name:11} rows {len(a):4} {'same' if same_rows else 'DIFFER'}"
          f"  weight files {len(da):2} {'same' if same_files else 'DIFFER'}  last eval loss {loss}")
    bad += (not same_rows) + (not same_files)
sys.exit(1 if bad else 0)
EOF
