#!/usr/bin/env bash
# The long fuzzing run of every parser of user input (tests/fuzz.rs): LORS_FUZZ_CASES mutated
# inputs per parser (default 170000: six parsers, over a million inputs in all), in the test
# profile so that integer overflows panic too. Prints inputs and time per parser; exits non-zero
# on the first panic, with proptest's shrunk input.
#
#   scripts/fuzz.sh            # ~1M inputs
#   LORS_FUZZ_CASES=5000 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LORS_FUZZ_CASES="${LORS_FUZZ_CASES:-170000}"
log="$(mktemp)"
status=0
cargo test --test fuzz -- --nocapture --test-threads 2 >"$log" 2>&1 || status=$?
# Panics inside third-party readers are caught and counted (the `fuzz ...: N inputs made`
# lines); only a panic that escapes fails a test.
grep -E '^fuzz |^test result|FAILED|minimal failing input' "$log" || true
echo "panic sites inside third-party readers (caught):"
grep -oE 'panicked at [^ ]+registry/src/[^/]+/[^:]+:[0-9]+' "$log" | sed 's|.*registry/src/[^/]*/||' |
    sort | uniq -c | sort -rn || true
[ "$status" -eq 0 ] || echo "full log: $log"
exit "$status"
