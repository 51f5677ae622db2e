#!/usr/bin/env bash
# The speed of each method-zoo option, measured alone on an otherwise idle machine: every
# run of scripts/methods.sh on stories260K-wanda-50 for 60 steps (same batch and seq_len, no
# evaluation until the end), median tokens/s over steps 11-60 and the step peak. Prints a
# Markdown table. Run after methods.sh (it reads its profile); about 9 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
out=runs/methods-timing
rm -rf "$out"
mkdir -p "$out"
# The run names and overrides of methods.sh.
eval "$(sed -n '/^declare -A runs=(/,/^)/p' scripts/methods.sh)"
eval "$(sed -n '/^order=(/,/)$/p' scripts/methods.sh)"
for name in "${order[@]}"; do
  sets=()
  for kv in ${runs[$name]}; do
    key=${kv%%=*} value=${kv#*=}
    [[ $value =~ ^[0-9.e+-]+$|^true$|^false$ ]] || value="\"$value\""
    sets+=(--set "$key=$value")
  done
  target/release/lors train --profile runs/methods/profile.toml --run-dir "$out/$name" \
    --set 'model.path="../shared/models/stories260K-wanda-50"' --set train.max_steps=60 \
    --set train.eval_every=0 --set train.save_every=0 "${sets[@]}" > "$out/$name.log" 2>&1
done
python3 - "$out" "${order[@]}" <<'PY'
import json, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
print("| run | median tokens/s (steps 11-60) | step peak MiB |\n|---|---|---|")
for n in names:
    rows = [json.loads(l) for l in (out / n / "metrics.jsonl").open()]
    train = [r for r in rows if r.get("kind") == "train" and r["step"] > 10]
    tps = statistics.median(r["tokens_per_s"] for r in train)
    peak = max(r["step_peak_bytes"] for r in train) / 2**20
    print(f"| {n} | {tps:.0f} | {peak:.1f} |")
PY
