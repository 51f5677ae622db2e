#!/usr/bin/env bash
# The quality check of the training engine: the 50%-Wanda stories260K trained with each
# method on the same data and settings (rank 8, 300 steps, batch 8, seq_len 256), then merged
# and the merged model re-evaluated. Takes ~30 min on 2 CPU cores. Results: runs/quality/.
# Arguments pick runs by name (default: all of lors lors-standard sqft spp lora lors-exact).
# The method zoo's options have their own table: scripts/methods.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
profile=profiles/stories-wanda50-lors.toml
valid=../shared/data/tinystories-synth-valid.jsonl
out=runs/quality
mkdir -p "$out"
run() { # name, overrides...
  local name=$1; shift
  rm -rf "$out/$name"
  $bin train --profile "$profile" --run-dir "$out/$name" "$@" | tee "$out/$name.log"
  $bin merge --run "$out/$name" | tee -a "$out/$name.log"
  $bin eval --model "$out/$name/merged" --data "$valid" | tee -a "$out/$name.log"
}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(lors lors-standard sqft spp lora lors-exact)
for name in "${names[@]}"; do
  case $name in
    lors) run lors ;;
    lors-standard) run lors-standard --set adapter.init=standard ;;
    sqft) run sqft --set adapter.method=sqft ;;
    spp) run spp --set adapter.method=spp --set adapter.init=standard ;;
    lora) run lora --set adapter.method=lora ;;
    lors-exact) run lors-exact --set adapter.method=lors-exact ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
  esac
  echo "== $name"; grep -E "perplexity|density" "$out/$name.log" | tail -3
done
