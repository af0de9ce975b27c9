#!/usr/bin/env bash
# Instructions per request (callgrind), for the engine's (a) and (b) bodies: a
# serde_json::Value parse, decoding, and decoding + deciding. Each figure is the
# difference between 2,000 and 42,000 iterations, divided by 40,000, so set-up cancels.
# Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*instructions[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$binary" ] || { echo "instructions: could not build the driver" >&2; exit 1; }
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$binary" "$@" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-4s %-7s %12s\n' body mode instructions
for body in a b; do
  for mode in value decode decide; do
    low=$(count "$body" "$mode" 2000)
    high=$(count "$body" "$mode" 42000)
    printf '%-4s %-7s %12d\n' "$body" "$mode" $(( (high - low) / 40000 ))
  done
done
