#!/usr/bin/env bash
# The headless sweep check on stories260K-wanda-50: lors vs lors-exact x 3 learning rates x 2
# ranks (12 trials of 60 steps, batch 8, seq_len 256, validation on 10 batches every 20
# steps), once with ASHA early stopping (rungs at steps 20 and 40, η = 3) and once without,
# one trial at a time; prints both tables and the wall time each sweep took. Writes
# runs/sweep-check/. About 15 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin=target/release/lors
out=runs/sweep-check
rm -rf "$out"
mkdir -p "$out"
sed '/^\[eval\]/,$d' profiles/stories-wanda50-lors.toml > "$out/base.toml"
cat >> "$out/base.toml" <<'TOML'

[sweep]
adapter.method = ["lors", "lors-exact"]
adapter.rank = [4, 8]
optim.lr = [5e-4, 2e-3, 8e-3]
TOML
sets=(--set train.max_steps=60 --set train.eval_every=20 --set train.eval_batches=10
  --set train.save_every=20)
cp "$out/base.toml" "$out/early.toml"
printf '\n[sweep.early_stop]\nrungs = [20, 40]\nreduction = 3\n' >> "$out/early.toml"
for kind in early full; do
  profile="$out/base.toml"
  [ "$kind" = early ] && profile="$out/early.toml"
  start=$SECONDS
  $bin sweep --profile "$profile" --out "$out/$kind" "${sets[@]}" | tee "$out/$kind.log"
  echo "wall_s $((SECONDS - start))" | tee -a "$out/$kind.log"
done
$bin report "$out/early" "$out/full" --out "$out/report"
