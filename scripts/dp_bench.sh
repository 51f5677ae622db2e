#!/usr/bin/env bash
# Data parallel on this machine, side by side: the bench model (profiles/bench-train.toml's
# random checkpoint: hidden 1024, 4 layers, 50% unstructured; LoRS rank 16 on all seven
# projections), a global batch of 4 x 256 tokens as 2 micro-batches of 2, trained STEPS steps
# (default 8) by one process with 2 threads and by `mpirun -n 2` ranks with 1 thread each,
# ROUNDS times (default 3) interleaved. Reports per setup the median tokens/s of the steps
# after the first, the bytes each rank sends per step and the seconds in the exchange, and the
# peak RSS of each process; and checks the two give the same metrics bit for bit. Then the
# same for the gradient initialisation (16 calibration sequences, then one step): its
# passes run whole on every rank, its SVDs are split over the ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/mpi-up.sh >/dev/null
cargo build --release --features mpi
bin=$PWD/target/release/lors
out=${OUT:-runs/dp-bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)
model=$out/model-1024
[ -f "$model/config.json" ] || "$bin" random-model --out "$model"
steps=${STEPS:-8}
args=(train --profile profiles/bench-train.toml --set "model.path=\"$model\""
  --set data.train=\"../shared/data/tinystories-synth-train.jsonl\" --set train.batch_size=2
  --set train.grad_accum=2 --set train.max_steps="$steps" --set train.eval_every=0
  --set train.save_every=0 --set train.merge_at_end=false --set "data.shard_dir=\"$out/shards\"")
"$bin" data prepare "${args[@]:1}" >/dev/null
for round in $(seq "${ROUNDS:-3}"); do
  rm -rf "$out/one-$round" "$out/dp-$round"
  RAYON_NUM_THREADS=2 /usr/bin/time -f %M -o "$out/one-$round.rss" \
    "$bin" "${args[@]}" --run-dir "$out/one-$round" >/dev/null 2>&1
  mpirun --allow-run-as-root -n 2 -x RAYON_NUM_THREADS=1 sh -c \
    '/usr/bin/time -f %M -o "$0.$OMPI_COMM_WORLD_RANK" "$@"' "$out/dp-$round.rss" \
    "$bin" "${args[@]}" --run-dir "$out/dp-$round" >/dev/null 2>&1
done
init=(--set 'adapter.init="gradient"' --set adapter.init_samples=16 --set train.max_steps=1)
for round in $(seq "${ROUNDS:-3}"); do
  rm -rf "$out/init-one-$round" "$out/init-dp-$round"
  RAYON_NUM_THREADS=2 "$bin" "${args[@]}" "${init[@]}" --run-dir "$out/init-one-$round" \
    >/dev/null 2>&1
  mpirun --allow-run-as-root -n 2 -x RAYON_NUM_THREADS=1 "$bin" "${args[@]}" "${init[@]}" \
    --run-dir "$out/init-dp-$round" >/dev/null 2>&1
done
python3 - "$out" "${ROUNDS:-3}" <<'PY'
import json, pathlib, statistics, sys
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def train_rows(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "train"]
def same(a, b):
    keep = ("step", "loss", "lr", "grad_norm")
    return [[r[k] for k in keep] for r in a] == [[r[k] for k in keep] for r in b]
speed = {"one": [], "dp": []}
for r in range(1, rounds + 1):
    one, dp = train_rows(out / f"one-{r}"), train_rows(out / f"dp-{r}")
    assert same(one, dp), f"round {r}: the curves differ"
    for name, rows in (("one", one), ("dp", dp)):
        speed[name].append(statistics.median(x["tokens_per_s"] for x in rows[1:]))
    ex = [x["exchange"] for x in dp[1:]]
def rss(path):
    return int(path.read_text().split()[-1]) / 1024
one_rss = [rss(out / f"one-{r}.rss") for r in range(1, rounds + 1)]
dp_rss = [rss(p) for p in sorted(out.glob("dp-*.rss.*"))]
m1, m2 = statistics.median(speed["one"]), statistics.median(speed["dp"])
print(f"1 process x 2 threads: {m1:.0f} tokens/s (rounds {', '.join(f'{s:.0f}' for s in speed['one'])}), peak RSS {max(one_rss):.0f} MiB")
print(f"2 ranks x 1 thread:    {m2:.0f} tokens/s (rounds {', '.join(f'{s:.0f}' for s in speed['dp'])}), peak RSS {max(dp_rss):.0f} MiB per rank; {m2 / m1:.2f}x")
print(f"exchange per step: {ex[0]['bytes_sent'] / 2**20:.2f} MiB sent per rank, "
      f"median {statistics.median(e['seconds'] for e in ex) * 1e3:.1f} ms (last round)")
print("curves: bit for bit the same in every round")
def init_s(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["seconds"] for r in rows if r.get("kind") == "init")
inits = {"one": [], "dp": []}
for r in range(1, rounds + 1):
    one, dp = out / f"init-one-{r}", out / f"init-dp-{r}"
    assert same(train_rows(one), train_rows(dp)), f"init round {r}: the first step differs"
    inits["one"].append(init_s(one))
    inits["dp"].append(init_s(dp))
i1, i2 = statistics.median(inits["one"]), statistics.median(inits["dp"])
print(f"gradient init (16 sequences, 28 layers): 1 process {i1:.2f} s, 2 ranks {i2:.2f} s "
      f"(medians of {rounds}); {i1 / i2:.2f}x; the first step after it bit for bit the same")
PY
