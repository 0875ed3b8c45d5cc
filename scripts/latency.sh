#!/usr/bin/env bash
# Latency benchmark: `braid gen --rate RATE` appends the synthetic workload live while a
# `braid run` follows it, for the journey topology (session) and the order-fulfilment one
# (complete), each with checkpoints every INTERVAL. At the end the job is stopped (SIGTERM)
# and its summary's `latency_ms` gives p50 / p99 / max over the correlation records it
# published: for a journey, from the slice whose watermark closed the session to the
# journey's publication; for a complete/incomplete record, from the read of the part that
# decided it to its publication; and, below, the same in three parts (`latency_parts_ms`):
# until the committer holds the record's checkpoint, its commit, its publication. Release build.
# Knobs (environment): RATE (50000 records/s) EVENTS (1000000 journey events: 20 s at the
# default rate) CUSTOMERS (100000) INTERVAL (3ms; the topologies' own is 1s) KEEP (unset)
# ONLY_JOURNEYS (unset: set, the fulfilment run is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

RATE="${RATE:-50000}"
EVENTS="${EVENTS:-1000000}"
CUSTOMERS="${CUSTOMERS:-100000}"
INTERVAL="${INTERVAL:-3ms}"

cargo build --release --locked --quiet --bin braid
BIN="${CARGO_TARGET_DIR:-target}/release/braid"
WORK="$(mktemp -d)"
job=""
cleanup() {
  [ -z "$job" ] || kill "$job" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
export BRAID_LOG=warn

# latency NAME TOPOLOGY GEN_ARGS...: one live run over a paced producer.
latency() {
  local name="$1" topology="$2"; shift 2
  local log="$WORK/$name/log" summary="$WORK/$name/summary.json"
  mkdir -p "$WORK/$name"
  sed "s|^\[output\]|[checkpoint]\ninterval = \"$INTERVAL\"\n\n[output]|" "$topology" >"$WORK/$name/topology.toml"
  # The sources exist before the job starts (gen creates them with these counts too).
  for t in page.viewed:4 cart.updated:2 order.placed:2 payment.processed:2 inventory.reserved:2 shipment.created:2; do
    "$BIN" --log "$log" topic create "${t%%:*}" --partitions "${t##*:}" >/dev/null
  done
  "$BIN" --log "$log" run "$WORK/$name/topology.toml" --state "$WORK/$name/state" \
    --summary-json "$summary" >/dev/null &
  job=$!
  "$BIN" --log "$log" gen --rate "$RATE" --events "$EVENTS" --customers "$CUSTOMERS" "$@" >/dev/null 2>&1
  kill -TERM "$job"
  wait "$job"
  job=""
  python3 - "$name" "$summary" <<'EOF'
import json, sys
name, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
l = s.get("latency_ms") or {}
print(f"{name:<12} {s['records_in']:>9} records in at {s['records_in'] * 1000 / max(s['millis'], 1):>7.0f}/s   "
      f"latency over {l.get('records', 0)} records: p50 {l.get('p50')} ms  p99 {l.get('p99')} ms  max {l.get('max')} ms")
parts = {p: (s.get("latency_parts_ms") or {}).get(p) or {} for p in ("checkpoint", "commit", "publish")}
print(" " * 14 + "   ".join(f"{p} p50 {q.get('p50')} p99 {q.get('p99')} max {q.get('max')}" for p, q in parts.items()))
EOF
}

echo "latency: $EVENTS journey events at $RATE records/s, checkpoints every $INTERVAL" >&2
latency journeys topologies/customer_journey.toml --no-fulfilment
[ -n "${ONLY_JOURNEYS:-}" ] || latency fulfilment topologies/order_fulfillment.toml
