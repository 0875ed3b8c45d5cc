#!/usr/bin/env bash
# End-to-end benchmark, in ONE invocation on ONE generated dataset:
#   baseline  `braid scan`: read every record from the embedded log and parse its JSON
#   braid     `braid run --bounded` of topologies/customer_journey.toml, 1 shard and default
#             (checkpoints every 1 s, the topology's setting), and default with checkpoints off
#             (one final checkpoint: interval 1 h) to show what checkpointing costs
# Each figure is the median of RUNS runs; peak RSS from GNU time; RocksDB batches = bytes of
# the checkpoint batches written (the last run's summary). Release build.
# Knobs (environment): EVENTS (2000000) CUSTOMERS (200000) RUNS (3) SEED (1) KEEP (unset).
#
# `scripts/bench.sh --fluvio [ENDPOINT]` also runs the baseline and braid (default shards)
# against a Fluvio cluster (default 127.0.0.1:9003) on the same dataset, produced there
# with `braid gen --fluvio`. It needs the `fluvio` CLI on PATH (to delete the benchmark's
# topics between runs) and DELETES the topics page-viewed, cart-updated, order-placed and
# customer-journey* on that cluster.
set -euo pipefail
FLUVIO=""
if [ "${1:-}" = "--fluvio" ]; then
  FLUVIO="${2:-127.0.0.1:9003}"
fi
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

# before_run: what each measured run starts from (no output topics, no state).
before_run() { rm -rf "$LOG"/customer.journey* "$WORK/state"; }
# measure NAME CMD...: runs CMD RUNS times; CMD writes its summary JSON to $WORK/summary.json.
measure() {
  local name="$1"; shift
  : >"$WORK/$name.rates"; : >"$WORK/$name.rss"
  for i in $(seq "$RUNS"); do
    before_run
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
  awk -v b="$base" -v x="$(cat "$WORK/$n.median")" -v n="$n" 'BEGIN { printf "ratio %s / baseline: %.3f\n", n, x / b }'
done
awk -v a="$(cat "$WORK/braid-1-shard.median")" -v b="$(cat "$WORK/braid-default.median")" \
  'BEGIN { printf "scaling default / 1 shard: %.3f\n", b / a }'

[ -n "$FLUVIO" ] || exit 0
command -v fluvio >/dev/null || { echo "bench.sh --fluvio: the fluvio CLI is not on PATH" >&2; exit 1; }
echo "bench: the same dataset on the Fluvio cluster at $FLUVIO" >&2
FTOPOLOGY="$WORK/fluvio.toml"
sed -e 's/^broker = .*/broker = { kind = "fluvio", endpoint = "'"$FLUVIO"'" }/' \
  -e '/^topic = \|^journeys = \|^late = \|^dead_letters = /s/\./-/g' "$TOPOLOGY" >"$FTOPOLOGY"
drop_topics() {
  for t in "$@"; do
    if fluvio topic list 2>/dev/null | awk '{print $1}' | grep -qx "$t"; then
      fluvio topic delete "$t" >/dev/null
    fi
  done
}
drop_topics page-viewed cart-updated order-placed customer-journey customer-journey-late customer-journey-dlq
"$BIN" --fluvio "$FLUVIO" gen --events "$EVENTS" --customers "$CUSTOMERS" --seed "$SEED" --no-fulfilment >"$WORK/fluvio-gen.json"
# On Fluvio a run starts without the job's output topics.
before_run() {
  drop_topics customer-journey customer-journey-late customer-journey-dlq
  rm -rf "$WORK/state"
}
measure fluvio-baseline "$BIN" scan "$FTOPOLOGY" --summary-json "$WORK/summary.json"
measure fluvio-braid-default "$BIN" run --bounded --state "$WORK/state" --summary-json "$WORK/summary.json" "$FTOPOLOGY"
awk -v b="$(cat "$WORK/fluvio-baseline.median")" -v x="$(cat "$WORK/fluvio-braid-default.median")" \
  'BEGIN { printf "ratio fluvio-braid-default / fluvio-baseline: %.3f\n", x / b }'
awk -v e="$(cat "$WORK/braid-default.median")" -v f="$(cat "$WORK/fluvio-braid-default.median")" \
  'BEGIN { printf "fluvio / embedded (braid default): %.2f\n", f / e }'
drop_topics page-viewed cart-updated order-placed customer-journey customer-journey-late customer-journey-dlq
