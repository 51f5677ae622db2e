#!/usr/bin/env bash
# The exact-bits matrix: stories260K pruned by Wanda to 50% and to 2:4, each trained 20 steps
# with lors, lors-exact, sqft, spp and lors with every zoo option, merged; for each export
# scripts/check_zero_bits.py counts, from the raw bits, the pruned positions (zero in the
# base) that are not +0.0 and those whose bits differ from the base's, checks that every
# tensor the adapters do not touch is byte-identical, and loads the export with transformers
# (PYTHON=... with torch and transformers; without them that column says so). About 10 min
# on 2 CPU cores. Results: runs/zero-bits/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
out=runs/zero-bits
python=${PYTHON:-python3}
mkdir -p "$out"
. scripts/lib/sets.sh
sed '/^\[eval\]/,$d' profiles/stories-wanda50-lors.toml > "$out/profile.toml"

declare -A runs=(
  [lors]=""
  [lors-exact]="adapter.method=lors-exact"
  [sqft]="adapter.method=sqft"
  [spp]="adapter.method=spp adapter.init=standard"
  [lors+olora]="adapter.init=olora"
  [lors+orthinit]="adapter.init=orthogonal"
  [lors+flat]="adapter.flat=true"
  [lors+sora]="adapter.sora=true"
  [lors+rite]="optim.name=lora-rite"
  [lors+xgb]="adapter.boost_every=5 adapter.init=standard"
  [lors+orth]="adapter.orth_reg=0.01"
  [lors+k4]="adapter.rank_keep=4"
  [lors+f2]="adapter.frozen_blocks=2"
)
order=(lors lors-exact sqft spp lors+olora lors+orthinit lors+flat lors+sora lors+rite
  lors+xgb lors+orth lors+k4 lors+f2)
: > "$out/rows.jsonl"
for model in stories260K-wanda-50 stories260K-wanda-2of4; do
  for name in "${order[@]}"; do
    dir=$out/$model/$name
    sets=(--set "model.path=\"../shared/models/$model\"" --set train.max_steps=20
      --set train.eval_every=20 --set train.save_every=20 --set adapter.init_samples=16
      --set train.merge_at_end=true)
    add_sets sets "${runs[$name]}"
    rm -rf "$dir"
    mkdir -p "$out/$model"
    $bin train --profile "$out/profile.toml" --run-dir "$dir" "${sets[@]}" > "$dir.log" 2>&1 ||
      { echo "$model/$name failed: see $dir.log"; exit 1; }
    $python scripts/check_zero_bits.py "$dir/merged" "../shared/models/$model" \
      --name "$model/$name" >> "$out/rows.jsonl"
    tail -1 "$out/rows.jsonl"
  done
done
$python - "$out/rows.jsonl" > "$out/table.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| export | pruned positions | not +0.0 | bits differ from base | base's -0.0 | untouched tensors identical | transformers loads |")
print("|---|---:|---:|---:|---:|---|---|")
for r in rows:
    print(f"| {r['name']} | {r['pruned']} | {r['not_positive_zero']} | {r['differ_from_base']} | "
          f"{r['base_negative_zero']} | {r['untouched_identical']} | {r['transformers']} |")
PY
cat "$out/table.md"
