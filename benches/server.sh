#!/usr/bin/env bash
# Instructions per request of the server alone (callgrind), where the user pays: each
# server runs under callgrind in its own process and a client sends it ~200-byte and
# ~1 KiB `tools/call`s from another process, natively, over one keep-alive loopback
# connection. Each figure is the difference between 200 and 1,200 requests, divided by
# 1,000, so start-up and shut-down cancel.
#
#   bare          axum + rmcp (stateless JSON), no layer
#   layer         nest_service("/mcp", layer.layer(mcp)): the README's composition
#   router-layer  Router::layer(layer)
#   from-file     nest_service with PolicyLayer::from_file's defaults (the real clock)
#
# Then `mcp-policy gateway` (release build, default logging, and with RUST_LOG=warn)
# against a plain hyper reverse proxy, both in front of the same bare upstream (run
# natively, not counted). Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
driver=$(cargo bench --bench server --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*server[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$driver" ] || { echo "server.sh: could not build the server driver" >&2; exit 1; }
cargo build --release -q -p mcp-policy
gateway=target/release/mcp-policy
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# port FILE: the port a server printed on its first line, once it has.
port() {
  local tries=0
  until grep -q '127.0.0.1:[0-9]' "$1" 2>/dev/null; do
    sleep 0.1
    tries=$((tries + 1))
    [ "$tries" -lt 600 ] || { echo "server.sh: no port in $1" >&2; cat "$1" >&2; exit 1; }
  done
  grep -o '127.0.0.1:[0-9]*' "$1" | head -n 1 | cut -d: -f2
}

# count SIZE REQUESTS STOP COMMAND...: instructions of COMMAND under callgrind while
# the client sends REQUESTS calls of SIZE; STOP is `exit` (it exits when the client's
# connection closes) or `term` (it is sent SIGTERM once the client is done).
count() {
  local size=$1 requests=$2 stop=$3
  shift 3
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" >"$work/out" 2>"$work/err" &
  local pid=$!
  "$driver" client "$(port "$work/out")" "$size" "$requests"
  [ "$stop" = term ] && kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/err"
}

per_request() {
  local size=$1 stop=$2
  shift 2
  local low high
  low=$(count "$size" 200 "$stop" "$@")
  high=$(count "$size" 1200 "$stop" "$@")
  echo $(( (high - low) / 1000 ))
}

share() { awk -v b="$1" -v l="$2" 'BEGIN { printf "%+.1f%%", (l - b) * 100 / b }'; }

echo "server alone: instructions per request ($(date -u +%F), $(nproc) cores)"
printf '%-5s %10s %10s %8s %13s %8s %10s %8s\n' body bare layer added router-layer added from-file added
for size in 200 1k; do
  bare=$(per_request "$size" exit "$driver" serve bare)
  layer=$(per_request "$size" exit "$driver" serve layer)
  router=$(per_request "$size" exit "$driver" serve router-layer)
  file=$(per_request "$size" exit "$driver" serve from-file)
  printf '%-5s %10d %10d %8s %13d %8s %10d %8s\n' "$size" "$bare" "$layer" "$(share "$bare" "$layer")" \
    "$router" "$(share "$bare" "$router")" "$file" "$(share "$bare" "$file")"
done

# The gateway and the plain proxy, in front of one upstream.
"$driver" upstream >"$work/upstream" 2>&1 &
upstream="http://127.0.0.1:$(port "$work/upstream")/mcp"
cat >"$work/policy.json" <<'POLICY'
{"version":"1","default":"deny","tools":{"echo":{
  "limits":[{"counter":"rate","window":"day","max":4000000000,"scope":"grant"}]}}}
POLICY
echo
printf '%-5s %12s %12s %7s %14s %7s\n' body plain-proxy gateway ratio gateway-warn ratio
for size in 200 1k; do
  proxy=$(per_request "$size" exit "$driver" proxy "$upstream")
  gw=$(per_request "$size" term "$gateway" gateway --policy "$work/policy.json" \
    --upstream "$upstream" --listen 127.0.0.1:0)
  quiet=$(RUST_LOG=warn per_request "$size" term "$gateway" gateway --policy "$work/policy.json" \
    --upstream "$upstream" --listen 127.0.0.1:0)
  ratio() { awk -v p="$proxy" -v g="$1" 'BEGIN { printf "%.2fx", g / p }'; }
  printf '%-5s %12d %12d %7s %14d %7s\n' "$size" "$proxy" "$gw" "$(ratio "$gw")" "$quiet" "$(ratio "$quiet")"
done
