#!/usr/bin/env bash
# The GPU device check: a CUDA build of lors on one NVIDIA GPU (written for an H200 with a
# CUDA 13 driver), no network and no Rust toolchain there. Two halves:
#
#   scripts/gpu-check.sh prepare   # here: CUDA build (scripts/cuda-build.sh), then pack the
#                                  # stripped binary (xz) and the real 260K test model and
#                                  # data from ../shared into target/gpu-check (about 15 MB)
#   scripts/gpu-check.sh run [N..] # on the GPU machine, from the repository root with
#                                  # target/gpu-check beside it; logs go to $OUT (or
#                                  # target/gpu-check/out); stages N only when given
#
# `run` took 6 minutes (365 s) on an H200:
#   1. the GPU, the driver, and the libraries the binary loads;
#   2. `lors bench layer` at 4096x4096, 8192 tokens, r=16, bf16, every method, after checking
#      every method's output and gradients on the GPU against an f64 CPU reference
#      (unstructured 50% and 2:4), plus the same check in f32;
#   3. LoRS (gradient init) on the real 260K Llama pruned by Wanda, 100 steps on the GPU in
#      f32 and bf16 (compare with the same profile on the CPU), and the merged export, which
#      fails unless every pruned weight is still exactly zero;
#   4. `lors bench train` on a random ~1B Llama pruned 2:4 (hidden 2048, 16 layers, seq 2048,
#      bf16): tokens/s, peak GPU memory and the linear layers' TFLOP/s next to the card's
#      bf16 matmul peak (about 790 TFLOP/s measured on an H200 with PyTorch);
#   5. scale: LoRS on a random Llama-3-8B-shaped model pruned 2:4 (profiles/gpu-bench-8b.toml:
#      32 layers, hidden 4096, GQA 32/8, MLP 14336, vocab 128256, bf16), one 4096-token
#      sequence per step, blocks recomputed in backward: whether it fits, GPU peak, tokens/s.
#      Not yet run on a GPU; writing the 16 GB random checkpoint takes a few minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=target/gpu-check

prepare() {
  set -e
  scripts/cuda-build.sh
  rm -rf "$pack" && mkdir -p "$pack/shared/models" "$pack/shared/data"
  strip -o "$pack/lors" target/cuda/release/lors
  xz -T0 -6 -f "$pack/lors"
  cp -r ../shared/models/stories260K-wanda-50 "$pack/shared/models/"
  cp ../shared/data/tinystories-synth-train.jsonl ../shared/data/tinystories-synth-valid.jsonl \
    "$pack/shared/data/"
  du -sh "$pack"
}

# Folders holding the CUDA 13 libraries and the driver, for LD_LIBRARY_PATH.
library_path() {
  local dirs=() lib d
  for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 \
    libnvrtc.so.13; do
    d=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/local/cuda* /opt /usr/lib/python3* \
      -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [ -n "$d" ] && dirs+=("$d")
  done
  printf '%s\n' "${dirs[@]}" | awk '!seen[$0]++' | paste -sd:
}

run() {
  local stages=" ${*:-1 2 3 4 5} "
  want() { [[ $stages == *" $1 "* ]]; }
  local out=${OUT:-$pack/out} work=$pack/work
  mkdir -p "$out" "$work"
  local bin=$work/lors
  python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('$pack/lors.xz'), open('$bin','wb'))"
  chmod +x "$bin"
  export LD_LIBRARY_PATH=$(library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  local log=$out/gpu-check.log
  exec > >(tee "$log") 2>&1
  step() { echo; echo "=== $* ($(date +%T))"; }

  step "1. GPU, driver, libraries"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc|not found"
  "$bin" --version || { echo "the binary does not start"; return 1; }

  if want 2; then
    step "2. bench layer: 4096x4096, 8192 tokens, r=16, bf16 (unstructured 50%, then 2:4)"
    local layer="bench layer --device cuda:0 --in 4096 --out 4096 --tokens 8192 --rank 16 --runs 10"
    timeout 150 "$bin" $layer --dtype bf16 --verify --json > "$out/layer-bf16-50.json"
    python3 - "$out/layer-bf16-50.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for v in r["verify"]:
      print(f"verify {v['method']:<11} y {v['y']:.1e} grad_x {v['grad_x']:.1e} grad_A {v['grad_a']:.1e} grad_B {v['grad_b']:.1e} (tol {v['tolerance']:.0e})")
for m in r["results"]:
      print(f"{m['method']:<11} {m['median_ms']:8.2f} ms  x lora {m['time_vs_lora']:.2f}  {m['tflops']:6.1f} TFLOP/s "
            f"({100*m['tflops']/790:.0f}% of 790)  kept {m['kept_bytes']/2**20:8.1f} MiB  peak {m['peak_bytes']/2**20:8.1f} MiB")
EOF
    timeout 120 "$bin" $layer --dtype bf16 --pattern 2:4
    # The same two products in PyTorch (cuBLAS), for what these shapes allow on this card.
    timeout 60 python3 - <<'EOF' || echo "(no PyTorch here)"
import torch
x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
g = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
for _ in range(3): x @ w.T; g @ w
torch.cuda.synchronize()
a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
a.record()
for _ in range(20): x @ w.T; g @ w
b.record(); torch.cuda.synchronize()
ms = a.elapsed_time(b) / 20
print(f"torch {torch.__version__}: x@W.T + g@W at 8192x4096x4096 bf16: {ms:.3f} ms, {4*8192*4096*4096/ms/1e9:.0f} TFLOP/s")
EOF
    timeout 60 "$bin" bench layer --device cuda:0 --dtype f32 --in 1024 --out 1024 --tokens 1024 \
      --rank 16 --runs 3 --verify

  fi
  if want 3; then
    step "3. LoRS on stories260K-wanda-50: GPU f32 and bf16 (100 steps; the CPU f32 reference of the same profile is run beside the build)"
    local sets=(--set "model.path=$pack/shared/models/stories260K-wanda-50"
      --set "data.train=$pack/shared/data/tinystories-synth-train.jsonl"
      --set "data.valid=$pack/shared/data/tinystories-synth-valid.jsonl"
      --set train.max_steps=100 --set train.eval_every=50 --set train.save_every=0
      --set train.merge_at_end=true --set "train.output_dir=$work/runs")
    for cfg in "cuda:0 f32" "cuda:0 bf16"; do
      set -- $cfg
      timeout 120 "$bin" train --profile profiles/stories-wanda50-lors.toml "${sets[@]}" \
        --set "train.device=$1" --set "model.dtype=$2" --set "train.run_name=stories-${1/:/}-$2" \
        > "$out/train-${1/:/}-$2.log" 2>&1
      echo "$1 $2: exit $? | $(grep -E 'eval' "$out/train-${1/:/}-$2.log" | tail -2 | tr '\n' ' ')"
      tail -1 "$work/runs/stories-${1/:/}-$2/metrics.jsonl" 2>/dev/null | cut -c1-300
      "$bin" inspect --model "$work/runs/stories-${1/:/}-$2/merged" 2>&1 | tail -2
    done
    grep -h '"train"' "$work/runs/stories-cuda0-bf16/metrics.jsonl" | tail -1 | cut -c1-400

  fi
  if want 4; then
    step "4. bench train: random ~1B Llama, 2:4, bf16, seq 2048"
    local model=runs/gpu-bench-1b
    time timeout 150 "$bin" random-model --out "$model" --hidden 2048 --layers 16 --heads 32 \
      --kv-heads 8 --intermediate 8192 --prune 2:4 --max-positions 2048
    timeout 300 "$bin" bench train --profile profiles/gpu-bench-1b.toml --steps 4 --warmup 2 \
      --json > "$out/train-1b.json"
    python3 - "$out/train-1b.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
      gpu = r.get("gpu_peak_bytes") or 0
      print(f"{r['method']:<11} {r['tokens_per_s']:9.0f} tok/s  x lora {r['tokens_vs_lora']:.2f}  "
            f"linear {r['linear_tflops']:6.1f} TFLOP/s ({100*r['linear_tflops']/790:.0f}% of 790)  "
            f"GPU peak {gpu/2**30:6.2f} GiB  heap peak {r['peak_bytes']/2**30:5.2f} GiB")
EOF
  fi
  if want 5; then
    step "5. scale: random Llama-3-8B shape, 2:4, bf16, 1 x 4096 tokens, recompute = block"
    local big=runs/gpu-bench-8b
    time timeout 600 "$bin" random-model --out "$big" --hidden 4096 --layers 32 --heads 32 \
      --kv-heads 8 --intermediate 14336 --vocab 128256 --prune 2:4 --max-positions 4096 \
      --dtype bf16 --force
    timeout 400 "$bin" bench train --profile profiles/gpu-bench-8b.toml --methods lors \
      --steps 2 --warmup 1 --json > "$out/train-8b.json"
    python3 - "$out/train-8b.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
      gpu = r.get("gpu_peak_bytes") or 0
      print(f"{r['method']:<11} {r['tokens_per_s']:9.0f} tok/s  linear {r['linear_tflops']:6.1f} TFLOP/s "
            f"({100*r['linear_tflops']/790:.0f}% of 790)  GPU peak {gpu/2**30:6.2f} GiB")
EOF
  fi
  step "done"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
