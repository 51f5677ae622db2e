#!/usr/bin/env bash
# GGUF export checked by clients no one here wrote: the `gguf` package (llama.cpp's gguf-py)
# and llama.cpp itself (llama-cpp-python, built from source by pip), on
#   - a LoRS run on stories260K-wanda-50 (40 steps), exported as f32, f16, bf16, q8_0, q4_0;
#   - a LoRS run on SmolLM2-135M-Instruct pruned by Wanda to 50% (10 steps; the model comes
#     as a GGUF inside a PyPI wheel, see scripts/lib/smollm2.sh), exported as f32 and q8_0.
# For each file: every tensor read back by gguf-py, every pruned weight exactly zero (+0.0 in
# the float types, the zero code in Q8_0/Q4_0), gguf-py's own quantiser giving the same bytes;
# llama.cpp's per-token log-probabilities on a fixed text against `lors eval --token-logprobs`
# on the same weights (for f32 the merged model itself; for the other types the export read
# back by `lors convert --gguf`, so both sides hold the type's rounded weights).
#
# Tolerances (max relative difference of a token's log-probability). Each non-f32 export is
# also read back, re-exported as f32 and run by llama.cpp against lors on the same rounded
# weights: that comparison isolates the file (layout, names, metadata, tokenizer) and is held
# to f32's 1e-4 (only summation order differs; llama.cpp's KV cache set to f32, since its
# default f16 cache alone moves log-probabilities by ~1e-2). Run in its own type, llama.cpp's
# CPU backend also rounds the activations to the weights' dot-product type, so those runs are
# held to 32 times the relative error that rounding allows: f16 and bf16 round each element
# (unit roundoff 2^-11 -> 1.6e-2, 2^-8 -> 1.25e-1); q8_0 and q4_0 quantise the activations
# to 8-bit blocks of 32, whose error is 2^-8 of the block's largest element, at most sqrt(32)
# times its rms (-> 32 * 2^-8 * sqrt(32) = 0.71).
# Needs PyPI (pip) once; about 25 min on 2 cores (most of it building llama.cpp).
# Everything goes to runs/llama-cpp-check/; results in results.jsonl there.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
out=runs/llama-cpp-check
mkdir -p "$out"
venv=runs/pyenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import gguf, llama_cpp, safetensors, numpy' 2>/dev/null ||
  "$venv/bin/pip" install -q numpy safetensors gguf==0.19.0 llama-cpp-python==0.3.36
python=$venv/bin/python
results=$out/results.jsonl
: > "$results"

declare -A tolerance=([f32]=1e-4 [f16]=1.6e-2 [bf16]=1.25e-1 [q8_0]=0.71 [q4_0]=0.71)

check() { # name, run dir, text file, types...
  local name=$1 run=$2 text=$3
  shift 3
  for ty in "$@"; do
    local file=$out/$name-$ty.gguf back=$out/$name-$ty-back
    $bin export --from "$run" --gguf "$file" --type "$ty" --force
    rm -rf "$back"
    $bin convert --gguf "$file" --out "$back"
    local model=$back
    [ "$ty" = f32 ] && model=$run/merged
    $bin eval --model "$model" --token-logprobs "$text" --out "$out/$name-$ty-lors.json"
    # A failed comparison is recorded in results.jsonl and fails the summary at the end.
    $python scripts/check_gguf_export.py --gguf "$file" --hf "$run/merged" --type "$ty" \
      --lors-logprobs "$out/$name-$ty-lors.json" --tolerance "${tolerance[$ty]}" \
      --json "$results" || true
    if [ "$ty" != f32 ]; then
      local again=$out/$name-$ty-as-f32.gguf
      $bin export --from "$back" --gguf "$again" --type f32 --force
      $python scripts/check_gguf_export.py --gguf "$again" --hf "$back" --type "$ty-as-f32" \
        --lors-logprobs "$out/$name-$ty-lors.json" --tolerance "${tolerance[f32]}" \
        --json "$results" || true
    fi
  done
}

# stories260K-wanda-50: a LoRS run, and the first validation story as the text.
text=$out/story.txt
head -1 ../shared/data/tinystories-synth-valid.jsonl | $python -c \
  'import json,sys; sys.stdout.write(json.loads(sys.stdin.read())["text"])' > "$text"
rm -rf "$out/stories-run"
sed '/^\[eval\]/,$d' profiles/stories-wanda50-lors.toml > "$out/stories.toml"
$bin train --profile "$out/stories.toml" --run-dir "$out/stories-run" \
  --set train.max_steps=40 --set train.eval_every=40 --set train.save_every=40 \
  --set adapter.init_samples=16 --set train.merge_at_end=true
check stories "$out/stories-run" "$text" f32 f16 bf16 q8_0 q4_0

# SmolLM2-135M-Instruct, Wanda 50%: a short LoRS run; two WikiText-2 paragraphs as the text.
. scripts/lib/smollm2.sh
smollm2_dir runs/gguf-check/smollm2
pruned=runs/gguf-check/smollm2-wanda50
[ -f "$pruned/model.safetensors" ] || $bin prune --model runs/gguf-check/smollm2 --method wanda \
  --sparsity 0.5 --calib ../shared/data/c4_demo.jsonl --nsamples 32 --seq-len 512 --out "$pruned"
wiki=$out/wiki.txt
sed -n '2,8p' ../shared/data/wikitext2-test.raw > "$wiki"
rm -rf "$out/smollm2-run"
$bin train --profile profiles/smollm2-wanda50-lors.toml --run-dir "$out/smollm2-run" \
  --set train.max_steps=10 --set train.batch_size=2 --set data.seq_len=128 \
  --set adapter.init_samples=4 --set train.eval_every=10
check smollm2 "$out/smollm2-run" "$wiki" f32 q8_0

$python - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'file':42} {'zeros':>9} {'not exact':>9} {'kept->0':>8} {'quant bytes !=':>14} {'max rel':>9} {'tol':>6} tok=  ok")
for r in rows:
    g, l = r["gguf_py"], r["llama_cpp"]
    print(f"{r['gguf'].split('/')[-1]:42} {g['zeros']:9} {g['zeros_not_exact']:9} {g['kept_read_as_zero']:8} "
          f"{g['quantiser_bytes_differ']:14} {l['max_rel_diff']:9.2e} {l['tolerance']:6} "
          f"{'yes' if l['tokenisation_equal'] else 'NO':4} {r['ok']}")
sys.exit(0 if all(r["ok"] for r in rows) else 1)
PY
