#!/usr/bin/env bash
# Agreement of `lors eval --tasks` with lm-evaluation-harness (the PyPI `lm-eval` 0.4.13, with
# transformers) on the same models and the same local task files: 100 items per task in each
# hub dataset's format (scripts/make_task_files.py, built from ../shared's TinyStories), read by
# lm-eval through custom task YAMLs that include its own task definitions and only point the
# data at the local files. Compared item by item (scripts/compare_lm_eval.py): every choice's
# log-likelihood to 1e-4 relative, acc and acc_norm identical. Then the speed of HellaSwag-
# format scoring (lors vs lm-eval's hf model, batch 1, 2 threads each) and WikiText-2
# perplexity at 2048 side by side with transformers on the same windows.
#
# Models: ../shared/models/stories260K and SmolLM2-135M-Instruct (converted from its GGUF as in
# scripts/gguf_check.sh). Needs python with lm-eval, torch and transformers (PYTHON=...).
# STAGES picks the parts (default "agree speed wikitext"; about 25 min on 2 cores);
# WIKITEXT_WINDOWS the 2048-token windows scored (default 16, the first ones). Results:
# runs/lm-eval-check/.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cargo build --release
bin=target/release/lors
out=runs/lm-eval-check
tasks=(boolq rte hellaswag winogrande arc_easy arc_challenge openbookqa)
mkdir -p "$out/yaml"
. scripts/lib/smollm2.sh
smollm2_dir "$out/models/smollm2"
$python scripts/make_task_files.py "$out/tasks" "${ITEMS:-100}"

# lm-eval's own task definitions, with the data pointed at the local files.
lm=$($python -c 'import lm_eval, os; print(os.path.dirname(lm_eval.__file__))')
declare -A yaml=([boolq]=super_glue/boolq/default.yaml [rte]=glue/rte/default.yaml
  [hellaswag]=hellaswag/hellaswag.yaml [winogrande]=winogrande/default.yaml
  [arc_easy]=arc/arc_easy.yaml [arc_challenge]=arc/arc_challenge.yaml
  [openbookqa]=openbookqa/openbookqa.yaml)
for t in "${tasks[@]}"; do
  cat > "$out/yaml/lors_check_$t.yaml" <<YAML
include: $lm/tasks/${yaml[$t]}
task: lors_check_$t
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: $PWD/$out/tasks/$t.jsonl
training_split: null
validation_split: validation
test_split: null
YAML
done

export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
stages=" ${STAGES:-agree speed wikitext} "
seconds() { local s; s=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
lm_eval() { # model tasks output
  $python -m lm_eval --model hf --model_args "pretrained=$1,dtype=float32" --tasks "$2" \
    --include_path "$out/yaml" --device cpu --batch_size 1 --log_samples --output_path "$3"
}
check() { # name model
  local name=$1 model=$2 list
  list=$(IFS=,; echo "${tasks[*]}")
  rm -rf "$out/$name"
  $bin eval --model "$model" --tasks "$list" --tasks-dir "$out/tasks" \
    --samples "$out/$name/lors-samples.jsonl" --out "$out/$name/lors.json" | tee "$out/$name.txt"
  lm_eval "$model" "$(printf 'lors_check_%s,' "${tasks[@]}" | sed 's/,$//')" "$out/$name/lm-eval" \
    2>/dev/null | grep '^|' | tee -a "$out/$name.txt"
  $python scripts/compare_lm_eval.py "$out/$name/lors-samples.jsonl" "$out/$name/lm-eval" \
    | tee -a "$out/$name.txt"
}
if [[ $stages == *" agree "* ]]; then
  check stories260K ../shared/models/stories260K
  check smollm2 "$out/models/smollm2"
fi

# Speed: HellaSwag-format scoring of the 100 items on SmolLM2, whole commands timed (model
# load included), three runs each.
if [[ $stages == *" speed "* ]]; then
  for i in 1 2 3; do
    echo "hellaswag run $i: lors $(seconds $bin eval --model "$out/models/smollm2" --tasks hellaswag \
      --tasks-dir "$out/tasks") s, lm-eval $(seconds lm_eval "$out/models/smollm2" \
      lors_check_hellaswag "$out/speed") s"
  done | tee "$out/speed.txt"
fi

# WikiText-2 at 2048 on SmolLM2, the papers' join and windows, both tools.
if [[ $stages == *" wikitext "* ]]; then
  windows=${WIKITEXT_WINDOWS:-16}
  $bin eval --model "$out/models/smollm2" --wikitext ../shared/data/wikitext2-test.raw --seq-len 2048 \
    --max-windows "$windows" | tee "$out/wikitext.txt"
  $python scripts/torch_eval_bench.py "$out/models/smollm2" ../shared/data/wikitext2-test.raw \
    --wikitext --seq-len 2048 --windows "$windows" --batch 1 --threads 2 | tee -a "$out/wikitext.txt"
fi
