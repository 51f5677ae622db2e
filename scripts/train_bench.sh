#!/usr/bin/env bash
# Training speed and memory side by side with what users would pick instead: `lors bench
# train` (LoRS, rank 16, all seven projections; both recompute policies) and HF transformers +
# PEFT LoRA (scripts/torch_train_bench.py, with and without gradient checkpointing) on the
# same random checkpoint (hidden 1024, 4 layers, MLP 2816, 50% unstructured), the same batch
# and sequence, 2 threads each. Shapes: "BATCHxSEQ" arguments (default 4x256 1x2048).
# Needs torch, transformers and peft for python3 (PYTHON=... to pick an interpreter).
# The four runs of a shape repeat ROUNDS times (default 3), interleaved, so the machine's
# drift hits every tool alike; scripts/train_bench_summary.py then reports medians and the
# median of each round's speed ratio. About 20 min per round on 2 cores at the default
# shapes. Results: runs/train-bench/results-<time>.jsonl. MODEL=DIR benches that model
# instead of the random one (scripts/smollm2_train_bench.sh: the real SmolLM2 2:4).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(4x256 1x2048)
cargo build --release
bin=target/release/lors
out=runs/train-bench
mkdir -p "$out"
model=${MODEL:-$out/model-1024}
[ -n "${MODEL:-}" ] || [ -f "$model/config.json" ] ||
  $bin random-model --out "$model" --max-positions 4096
results=$out/results-$(date +%s).jsonl
export RAYON_NUM_THREADS=2
for round in $(seq "${ROUNDS:-3}"); do
  for shape in "${shapes[@]}"; do
    batch=${shape%x*}; seq=${shape#*x}
    for policy in selective block; do
      $bin bench train --profile profiles/bench-train.toml --methods lors --steps 4 --warmup 1 \
        --set model.path="$model" --set data.train=../shared/data/tinystories-synth-train.jsonl \
        --set train.batch_size="$batch" --set data.seq_len="$seq" --set train.recompute="$policy" \
        --set train.output_dir="$out" --json \
        | $python -c "import json, sys; r = json.load(sys.stdin)[0]; \
            r.update(tool='lors', shape='$shape', policy='$policy', round=$round); \
            print(json.dumps(r))" \
        | tee -a "$results"
    done
    for ckpt in "" --checkpointing; do
      $python scripts/torch_train_bench.py --model "$model" --batch "$batch" --seq "$seq" \
        --steps 4 --warmup 1 --threads 2 $ckpt \
        | $python -c "import json, sys; r = json.load(sys.stdin); \
            r.update(shape='$shape', round=$round); print(json.dumps(r))" \
        | tee -a "$results"
    done
  done
done
$python scripts/train_bench_summary.py "$results"
