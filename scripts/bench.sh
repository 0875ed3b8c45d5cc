#!/usr/bin/env bash
# End-to-end benchmark, in ONE invocation on ONE generated dataset:
#   baseline  `braid scan`: read every record from the embedded log and parse its JSON
#   braid     `braid run --bounded` of topologies/customer_journey.toml, 1 shard and default
#             (checkpoints every 1 s, the topology's setting), and default with checkpoints off
#             (one final checkpoint: interval 1 h) to show what checkpointing costs
# Each figure is the median of RUNS runs; peak RSS from GNU time; RocksDB batches = bytes of
# the checkpoint batches written (the last run's summary). Release build.
# Knobs (environment): EVENTS (2000000) CUSTOMERS (200000) RUNS (3) SEED (1) KEEP (unset).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
[ -x /usr/bin/time ] || apt_install time || { echo "bench.sh: GNU time is needed for peak RSS" >&2; exit 1; }

EVENTS="${EVENTS:-2000000}"
CUSTOMERS="${CUSTOMERS:-200000}"
RUNS="${RUNS:-3}"
SEED="${SEED:-1}"
TOPOLOGY=topologies/customer_journey.toml

cargo build --release --locked --quiet --bin braid
BIN="${CARGO_TARGET_DIR:-target}/release/braid"
WORK="$(mktemp -d)"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
export BRAID_LOG=warn
LOG="$WORK/log"

echo "bench: generating $EVENTS journey events for $CUSTOMERS customers (seed $SEED) into $LOG" >&2
"$BIN" --log "$LOG" gen --events "$EVENTS" --customers "$CUSTOMERS" --seed "$SEED" --no-fulfilment >"$WORK/gen.json"

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/.*\"$2\": *\([0-9.]*\).*/\1/p" "$1" | head -n 1; }

# measure NAME CMD...: runs CMD RUNS times; CMD writes its summary JSON to $WORK/summary.json.
measure() {
  local name="$1"; shift
  : >"$WORK/$name.rates"; : >"$WORK/$name.rss"
  for i in $(seq "$RUNS"); do
    rm -rf "$LOG"/customer.journey* "$WORK/state"
    /usr/bin/time -f '%M' -o "$WORK/time.out" "$@" >/dev/null
    local records millis
    records="$(field "$WORK/summary.json" records_in)"
    [ -n "$records" ] || records="$(field "$WORK/summary.json" records)"
    millis="$(field "$WORK/summary.json" millis)"
    awk -v r="$records" -v m="$millis" 'BEGIN { printf "%.0f\n", r * 1000 / (m > 0 ? m : 1) }' >>"$WORK/$name.rates"
    tail -n 1 "$WORK/time.out" >>"$WORK/$name.rss"
  done
  local rate rss written
  rate="$(median <"$WORK/$name.rates")"
  rss="$(median <"$WORK/$name.rss")"
  echo "$rate" >"$WORK/$name.median"
  written="$(field "$WORK/summary.json" checkpoint_bytes)"
  printf '%-22s %12s events/s   peak RSS %6d MiB   RocksDB batches %6s MiB   (runs: %s)\n' "$name" "$rate" "$((rss / 1024))" "$(( ${written:-0} / 1048576 ))" "$(tr '\n' ' ' <"$WORK/$name.rates")"
}

records="$(field "$WORK/gen.json" records)"
echo "dataset: $records records ($(du -sh "$LOG" | cut -f1) on disk), median of $RUNS runs each"
measure baseline "$BIN" --log "$LOG" scan "$TOPOLOGY" --summary-json "$WORK/summary.json"
run_args=(--log "$LOG" run --bounded --state "$WORK/state" --summary-json "$WORK/summary.json")
sed 's/^\[output\]/[checkpoint]\ninterval = "1h"\n\n[output]/' "$TOPOLOGY" >"$WORK/no-checkpoints.toml"
measure braid-1-shard "$BIN" "${run_args[@]}" --shards 1 "$TOPOLOGY"
measure braid-default "$BIN" "${run_args[@]}" "$TOPOLOGY"
measure braid-no-checkpoints "$BIN" "${run_args[@]}" "$WORK/no-checkpoints.toml"
base="$(cat "$WORK/baseline.median")"
awk -v a="$(cat "$WORK/braid-default.median")" -v b="$(cat "$WORK/braid-no-checkpoints.median")" \
  'BEGIN { printf "checkpoint cost (1 s vs off): %.1f%%\n", (1 - a / b) * 100 }'
for n in braid-1-shard braid-default; do
  awk -v b="$base" -v x="$(cat "$WORK/$n.median")" -v n="$n" 'BEGIN { printf "ratio %s / baseline: %.2f\n", n, x / b }'
done
awk -v a="$(cat "$WORK/braid-1-shard.median")" -v b="$(cat "$WORK/braid-default.median")" \
  'BEGIN { printf "scaling default / 1 shard: %.2f\n", b / a }'
