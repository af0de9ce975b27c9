#!/usr/bin/env bash
# Instructions per request (callgrind), for the engine's (a) and (b) bodies: a
# serde_json::Value parse, decoding, decoding + deciding, and the whole layer around an
# inner service that answers at once (request in, answer read whole: the layer's own
# cost, with no server and no client); the pattern-scaling table;
# and whole requests through axum + rmcp, bare and behind the layer. Each figure is the
# difference between two iteration counts, divided by the difference, so set-up cancels.
# Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
driver() {
  local path
  path=$(cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null \
    | sed -n "s/.*\"executable\":\"\([^\"]*$1[^\"]*\)\".*/\1/p" | tail -n 1)
  [ -x "$path" ] || { echo "instructions: could not build the $1 driver" >&2; exit 1; }
  echo "$path"
}
binary=$(driver instructions)
requests=$(driver requests)
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$binary" "$@" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
count_requests() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$requests" "$@" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-4s %-7s %12s\n' body mode instructions
for body in a b; do
  for mode in value decode decide layer; do
    low=$(count "$body" "$mode" 2000)
    high=$(count "$body" "$mode" 42000)
    printf '%-4s %-7s %12d\n' "$body" "$mode" $(( (high - low) / 40000 ))
  done
done

# The pattern-scaling table: decode + decide of one ~200-byte call under policies with
# many rules, patterns and hide patterns (engine_inputs.rs), next to a one-rule policy.
echo
printf '%-26s %10s %10s %10s\n' policy exact pattern unknown
for policy in one-rule 100-rules 1000-patterns 100-rules+1000-hide 1000-patterns+1000-hide; do
  row=$(printf '%-26s' "$policy")
  for call in exact pattern unknown; do
    low=$(count scale "$policy:$call" 2000)
    high=$(count scale "$policy:$call" 12000)
    row="$row $(printf '%10d' $(( (high - low) / 10000 )))"
  done
  echo "$row"
done

# Whole requests: axum + rmcp (stateless JSON), client included, bare and behind the
# layer; per request, between 200 and 1,200 requests on one keep-alive connection.
# `layer` wraps the MCP service (the README's composition), `router-layer` the router.
echo
echo "whole requests, client included (client and server in one process; the server"
echo "alone is ./benches/server.sh):"
printf '%-5s %12s %12s %9s %14s %9s\n' body bare layer added router-layer added
for size in 200 1k; do
  per_request() {
    echo $(( ($(count_requests "$1" "$size" 1200) - $(count_requests "$1" "$size" 200)) / 1000 ))
  }
  bare=$(per_request bare)
  layer=$(per_request layer)
  router=$(per_request router-layer)
  share() { awk -v b="$bare" -v l="$1" 'BEGIN { printf "%.1f", (l - b) * 100 / b }'; }
  printf '%-5s %12d %12d %8s%% %14d %8s%%\n' "$size" "$bare" "$layer" "$(share "$layer")" \
    "$router" "$(share "$router")"
done
