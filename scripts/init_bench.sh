#!/usr/bin/env bash
# The gradient init on a real model, next to the training step it precedes: SmolLM2-135M-
# Instruct (the PyPI wheel's GGUF, converted) pruned by SparseGPT to 2:4 with 16 C4 samples,
# then `lors train` with lors-exact, rank 16, init = "gradient", seq_len 256, batch 4, for
# init_samples 16 and 128 (arguments: other counts). Prints, per run, the init's seconds and
# calibration tokens/s, the training steps' median tokens/s, and their ratio (how many
# training tokens one calibration token costs). About 15 min on 2 cores. BIN=PATH runs
# another build of lors (e.g. an older commit's, for a before/after in one run); OUT=DIR
# writes its runs elsewhere than runs/init-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then cargo build --release; fi
bin=${BIN:-target/release/lors}
python=${PYTHON:-python3}
out=${OUT:-runs/init-bench}
mkdir -p "$out"
. scripts/lib/smollm2.sh
pruned=$(smollm2_2of4)
samples=("$@")
[ ${#samples[@]} -gt 0 ] || samples=(16 128)
for n in "${samples[@]}"; do
  dir=$out/init-$n
  rm -rf "$dir"
  $bin train --profile profiles/smollm2-wanda50-lors.toml --run-dir "$dir" \
    --set "model.path=\"$pruned\"" --set 'adapter.method="lors-exact"' --set adapter.rank=16 \
    --set adapter.init_samples="$n" --set data.seq_len=256 --set train.batch_size=4 \
    --set train.max_steps=12 --set train.eval_every=0 --set train.merge_at_end=false \
    > "$dir.log" 2>&1
  $python - "$dir/metrics.jsonl" "$n" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
init = next(r for r in rows if r["kind"] == "init")
train = [r["tokens_per_s"] for r in rows if r["kind"] == "train"][2:]
calib = init["sequences"] * 256 / init["seconds"]
step = statistics.median(train)
print(f"init_samples {sys.argv[2]}: init {init['seconds']:.1f} s for {init['sequences']} sequences "
      f"({calib:.0f} tokens/s, {init['sweeps']} sweep(s)); training median {step:.0f} tokens/s; "
      f"a calibration token costs {step / calib:.2f} training tokens")
PY
done
