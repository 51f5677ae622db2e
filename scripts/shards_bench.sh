#!/usr/bin/env bash
# Token shards on a big JSONL (default 1 GiB: the synthetic TinyStories training file repeated),
# side by side: peak RSS and wall time of a short `lors train` on it with BEFORE (a build that
# tokenises into memory, optional) and with BIN the first time (tokenising into a shard), the
# second time (reusing it), `lors data prepare` after the file changed (tokenised again), and
# a two-trial sweep (its trials reuse the shard).
#
#   BEFORE=/path/to/old/lors scripts/shards_bench.sh      # SIZE_MB=1024 OUT=runs/shards-bench
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/lors}
BEFORE=${BEFORE:-}
OUT=${OUT:-runs/shards-bench}
SIZE_MB=${SIZE_MB:-1024}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
out=$(cd "$OUT" && pwd)
data=$out/big.jsonl
python3 - "$data" "$SIZE_MB" <<'EOF'
import os, sys
path, size = sys.argv[1], int(sys.argv[2]) << 20
src = open("../shared/data/tinystories-synth-train.jsonl", "rb").read()
if not os.path.exists(path) or os.path.getsize(path) != size // len(src) * len(src):
    with open(path, "wb") as f:
        for _ in range(size // len(src)):
            f.write(src)
EOF
echo "data: $data, $(du -m "$data" | cut -f1) MiB"
rm -rf "$out/shards" "$out"/run-* "$out"/sweep
before=(--profile profiles/stories-wanda50-lors.toml --set "data.train=\"$data\""
  --set train.max_steps=2 --set train.eval_every=0 --set train.save_every=0
  --set 'adapter.init="standard"')
train=("${before[@]}" --set "data.shard_dir=\"$out/shards\"")

measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/$name.time" "$@" >"$out/$name.log" 2>&1 \
    || { tail -5 "$out/$name.log"; exit 1; }
  read -r wall kb <"$out/$name.time"
  printf '%-16s wall %7.1f s  peak RSS %6d MiB\n' "$name" "$wall" $((kb / 1024))
  grep -ho "data: .*" "$out/$name.log" | sed 's/^/                 /' || true
}

[ -n "$BEFORE" ] && measure before "$BEFORE" train "${before[@]}" --run-dir "$out/run-before"
measure first "$BIN" train "${train[@]}" --run-dir "$out/run-first"
measure second "$BIN" train "${train[@]}" --run-dir "$out/run-second"
cat >"$out/sweep.toml" <<EOF
[sweep]
optim.lr = [1e-3, 2e-3]
EOF
sed -n '/^\[sweep\]/q;p' profiles/stories-wanda50-lors.toml >"$out/sweep-base.toml"
cat "$out/sweep-base.toml" "$out/sweep.toml" >"$out/sweep-profile.toml"
measure sweep "$BIN" sweep --profile "$out/sweep-profile.toml" --out "$out/sweep" \
  --set "data.train=\"$data\"" --set train.max_steps=2 --set train.eval_every=0 \
  --set train.save_every=0 --set 'adapter.init="standard"' --set "data.shard_dir=\"$out/shards\""
grep -ho "data: .*" "$out"/sweep/t*.log | sed 's/^/  trial          /'
echo '{"text": "One more story: the cat sat on the mat."}' >>"$data"
measure changed "$BIN" data prepare "${train[@]}"
measure clean "$BIN" data clean --shard-dir "$out/shards"
grep -v "^ " "$out/clean.log"
