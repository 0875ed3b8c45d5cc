#!/usr/bin/env bash
# End-to-end benchmark, in ONE invocation on ONE generated dataset:
#   baseline  `braid scan`: read every record from the embedded log and parse its JSON
#   braid     `braid run --bounded` of topologies/customer_journey.toml, 1 shard and default
#             (checkpoints every 1 s, the topology's setting), and default with checkpoints off
#             (one final checkpoint: interval 1 h) to show what checkpointing costs
# The configurations run in turn, RUNS rounds of one run each, so that a drift of the
# machine's speed hits them alike; each figure is the median of its RUNS runs, and each
# ratio the median of the rounds' own ratios. Peak RSS from GNU time; checkpoint writes =
# bytes the checkpoints wrote: RocksDB batches and outbox journals (the last run's
# summary), and where each braid configuration's last run spent its CPU, by stage (source,
# shards, committer, publisher, other: the summary's `cpu`). Release build.
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
# run_once NAME CMD...: one run of CMD, which writes its summary JSON to
# $WORK/summary.json; appends its events/s and peak RSS (KiB) to NAME's lists.
run_once() {
  local name="$1"; shift
  before_run
  /usr/bin/time -f '%M' -o "$WORK/time.out" "$@" >/dev/null
  local records millis
  records="$(field "$WORK/summary.json" records_in)"
  [ -n "$records" ] || records="$(field "$WORK/summary.json" records)"
  millis="$(field "$WORK/summary.json" millis)"
  awk -v r="$records" -v m="$millis" 'BEGIN { printf "%.0f\n", r * 1000 / (m > 0 ? m : 1) }' >>"$WORK/$name.rates"
  tail -n 1 "$WORK/time.out" >>"$WORK/$name.rss"
  field "$WORK/summary.json" checkpoint_bytes >"$WORK/$name.written"
  cp "$WORK/summary.json" "$WORK/$name.summary"
}
# stages NAME: where the last run of NAME spent its CPU, by stage (a braid run's summary
# `cpu`); only the shards' part divides among more shards, so this bounds the scaling.
stages() {
  python3 - "$1" "$WORK/$1.summary" <<'PY'
import json, sys
name, s = sys.argv[1], json.load(open(sys.argv[2]))
c = s.get("cpu")
if c:
    total = sum(c.values())
    parts = "  ".join(f"{k[:-3]} {v / 1000:.2f}" for k, v in c.items())
    print(f"  {name} CPU s: {parts}  = {total / 1000:.2f} in {s['millis'] / 1000:.2f} wall "
          f"({total / max(s['millis'], 1):.2f} cores; shards {100 * c['shards_ms'] / max(total, 1):.0f}%)")
PY
}
# report NAME: NAME's line: median events/s and peak RSS, the last run's checkpoint writes.
report() {
  local name="$1" rate rss written
  rate="$(median <"$WORK/$name.rates")"
  rss="$(median <"$WORK/$name.rss")"
  written="$(cat "$WORK/$name.written")"
  printf '%-22s %12s events/s   peak RSS %6d MiB   checkpoint writes %6s MiB   (runs: %s)\n' "$name" "$rate" "$((rss / 1024))" "$(( ${written:-0} / 1048576 ))" "$(tr '\n' ' ' <"$WORK/$name.rates")"
}
# ratio LABEL A B: the median over rounds of A's events/s over B's in the same round.
# The configurations run in turn, round after round, so a drift of the machine's speed
# (these machines are shared) moves both sides of each round's ratio alike.
ratio() {
  local label="$1" a="$2" b="$3"
  paste "$WORK/$a.rates" "$WORK/$b.rates" | awk '{ printf "%.3f\n", $1 / $2 }' >"$WORK/ratio"
  printf '%s: %s   (rounds: %s)\n' "$label" "$(median <"$WORK/ratio")" "$(tr '\n' ' ' <"$WORK/ratio")"
}
# rounds NAME...: RUNS rounds, each running every NAME once (the command `cmd NAME` sets).
rounds() {
  local name i
  for name in "$@"; do : >"$WORK/$name.rates"; : >"$WORK/$name.rss"; done
  for i in $(seq "$RUNS"); do
    for name in "$@"; do
      cmd "$name"
      run_once "$name" "${CMD[@]}"
    done
  done
  for name in "$@"; do report "$name"; done
  for name in "$@"; do stages "$name"; done
}

records="$(field "$WORK/gen.json" records)"
echo "dataset: $records records ($(du -sh "$LOG" | cut -f1) on disk), $RUNS rounds, medians"
run_args=(--log "$LOG" run --bounded --state "$WORK/state" --summary-json "$WORK/summary.json")
sed 's/^\[output\]/[checkpoint]\ninterval = "1h"\n\n[output]/' "$TOPOLOGY" >"$WORK/no-checkpoints.toml"
# cmd NAME: sets CMD to the command line of configuration NAME.
cmd() {
  case "$1" in
    baseline) CMD=("$BIN" --log "$LOG" scan "$TOPOLOGY" --summary-json "$WORK/summary.json") ;;
    braid-1-shard) CMD=("$BIN" "${run_args[@]}" --shards 1 "$TOPOLOGY") ;;
    braid-default) CMD=("$BIN" "${run_args[@]}" "$TOPOLOGY") ;;
    braid-no-checkpoints) CMD=("$BIN" "${run_args[@]}" "$WORK/no-checkpoints.toml") ;;
    fluvio-baseline) CMD=("$BIN" scan "$FTOPOLOGY" --summary-json "$WORK/summary.json") ;;
    fluvio-braid-default) CMD=("$BIN" run --bounded --state "$WORK/state" --summary-json "$WORK/summary.json" "$FTOPOLOGY") ;;
  esac
}
rounds baseline braid-1-shard braid-default braid-no-checkpoints
ratio "checkpoints on (1 s) / off (1 h)" braid-default braid-no-checkpoints
ratio "ratio braid-1-shard / baseline" braid-1-shard baseline
ratio "ratio braid-default / baseline" braid-default baseline
ratio "scaling default / 1 shard" braid-default braid-1-shard

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
rounds fluvio-baseline fluvio-braid-default
ratio "ratio fluvio-braid-default / fluvio-baseline" fluvio-braid-default fluvio-baseline
awk -v e="$(median <"$WORK/braid-default.rates")" -v f="$(median <"$WORK/fluvio-braid-default.rates")" \
  'BEGIN { printf "fluvio / embedded (braid default): %.2f\n", f / e }'
drop_topics page-viewed cart-updated order-placed customer-journey customer-journey-late customer-journey-dlq
