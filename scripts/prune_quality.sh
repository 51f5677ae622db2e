#!/usr/bin/env bash
# Pruning check: the dense stories260K pruned with magnitude, Wanda and SparseGPT, at 50%
# unstructured and 2:4, calibrated on 128 x 256 tokens of the synthetic TinyStories training
# set, perplexity on the validation set. Results: runs/prune/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
out=runs/prune
mkdir -p "$out"
for method in magnitude wanda sparsegpt; do
  for pattern in unstructured 2:4; do
    name=$method-${pattern/:/of}
    $bin prune --model ../shared/models/stories260K --method $method --pattern $pattern \
      --sparsity 0.5 --calib ../shared/data/tinystories-synth-train.jsonl --nsamples 128 \
      --seq-len 256 --out "$out/$name" --eval ../shared/data/tinystories-synth-valid.jsonl \
      2>/dev/null | tee "$out/$name.log"
  done
done
grep -H "after" "$out"/*.log
