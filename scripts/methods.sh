#!/usr/bin/env bash
# The method zoo's quality table: stories260K pruned by Wanda to 50% unstructured and to 2:4,
# each trained with lors, lors-exact and every zoo option on top of lors-exact, all with the
# same data and budget (rank 8, 300 steps, batch 8, seq_len 256; the settings of
# profiles/stories-wanda50-lors.toml without its [eval] tasks). Each run's merged model is
# evaluated on the validation file; the table (runs/methods/table.md) lists its perplexity,
# training time, the step's peak heap memory and whether every zero survived the merge.
# About 65 min on 2 CPU cores. Arguments pick runs by name (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
out=runs/methods
valid=../shared/data/tinystories-synth-valid.jsonl
mkdir -p "$out"
. scripts/lib/sets.sh
# The quality profile without its zero-shot tasks (they do not enter this table).
sed '/^\[eval\]/,$d' profiles/stories-wanda50-lors.toml > "$out/profile.toml"

# name: overrides on top of the profile (lors, gradient init).
declare -A runs=(
  [lors]=""
  [lors-exact]="adapter.method=lors-exact"
  [lors-exact+olora]="adapter.method=lors-exact adapter.init=olora"
  [lors-exact+orthinit]="adapter.method=lors-exact adapter.init=orthogonal"
  [lors-exact+flat]="adapter.method=lors-exact adapter.flat=true"
  [lors-exact+sora]="adapter.method=lors-exact adapter.sora=true"
  [lors-exact+rite]="adapter.method=lors-exact optim.name=lora-rite"
  [lors-exact+xgb100]="adapter.method=lors-exact adapter.boost_every=100"
  [lors-exact+orth]="adapter.method=lors-exact adapter.orth_reg=0.01"
  [lors-exact+k4]="adapter.method=lors-exact adapter.rank_keep=4"
  [lors-exact+f2]="adapter.method=lors-exact adapter.frozen_blocks=2"
)
order=(lors lors-exact lors-exact+olora lors-exact+orthinit lors-exact+flat lors-exact+sora
  lors-exact+rite lors-exact+xgb100 lors-exact+orth lors-exact+k4 lors-exact+f2)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${order[@]}")

run() { # model, name
  local model=$1 name=$2 dir="$out/$1/$2" sets=()
  add_sets sets "${runs[$name]}"
  rm -rf "$dir"
  local start=$SECONDS
  $bin train --profile "$out/profile.toml" --run-dir "$dir" \
    --set "model.path=\"../shared/models/$model\"" "${sets[@]}" > "$dir.log" 2>&1
  $bin merge --run "$dir" >> "$dir.log" 2>&1
  $bin eval --model "$dir/merged" --data "$valid" >> "$dir.log" 2>&1
  echo "wall_s $((SECONDS - start))" >> "$dir.log"
}

for model in stories260K-wanda-50 stories260K-wanda-2of4; do
  mkdir -p "$out/$model"
  for name in "${names[@]}"; do
    [ -n "${runs[$name]+x}" ] || { echo "unknown run $name" >&2; exit 2; }
    run "$model" "$name"
    echo "== $model $name: $(grep -E 'perplexity' "$out/$model/$name.log" | tail -1)"
  done
done
python3 scripts/methods_table.py "$out" "${order[@]}" | tee "$out/table.md"
