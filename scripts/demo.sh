#!/usr/bin/env bash
# Set-up + braid's main job on the embedded log: generate a realistic dataset with disorder,
# late events, duplicates and poison records, correlate it into customer journeys, and show
# a journey, a late report and a dead letter.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

EVENTS="${EVENTS:-20000}"
DEMO_DIR="${DEMO_DIR:-data/demo}"
export BRAID_LOG="${BRAID_LOG:-warn}"
LOG="$DEMO_DIR/log"

cargo build --quiet --locked --bin braid
braid() { "${CARGO_TARGET_DIR:-target}/debug/braid" --log "$LOG" "$@"; }
section() { printf '\n== %s\n' "$*"; }

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
section "generating $EVENTS journey events (seeded) into $LOG"
braid gen --events "$EVENTS" --customers 2000 --seed 7 --no-fulfilment > "$DEMO_DIR.gen.json"
echo "generation summary: $DEMO_DIR.gen.json"

section "topics"
braid topic list
braid topic describe page.viewed

section "first records of page.viewed, with their partition, offset, append time and key"
braid consume page.viewed -n 3 --meta

section "running topologies/customer_journey.toml over it (bounded: stop at the end, close every session)"
braid run topologies/customer_journey.toml --bounded --state "$DEMO_DIR/state"

section "running it again: it resumes from its checkpoint, finds nothing new, publishes nothing twice"
braid run topologies/customer_journey.toml --bounded --state "$DEMO_DIR/state"

section "one customer journey (customer.journey)"
braid consume customer.journey -n 1 --pretty

section "one late-arrival report (customer.journey.late)"
braid consume customer.journey.late -n 1 --pretty

section "one dead letter (customer.journey.dlq)"
braid consume customer.journey.dlq -n 1 --pretty
