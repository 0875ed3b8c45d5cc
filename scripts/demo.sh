#!/usr/bin/env bash
# Set-up + braid's main job on the embedded log: generate a realistic dataset with disorder,
# late events, duplicates and poison records, then look at it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

EVENTS="${EVENTS:-20000}"
DEMO_DIR="${DEMO_DIR:-data/demo}"
LOG="$DEMO_DIR/log"

cargo build --quiet --locked --bin braid
braid() { "${CARGO_TARGET_DIR:-target}/debug/braid" --log "$LOG" "$@"; }
section() { printf '\n== %s\n' "$*"; }

rm -rf "$DEMO_DIR"
section "generating $EVENTS journey events (seeded) into $LOG"
braid gen --events "$EVENTS" --customers 2000 --seed 7

section "topics"
braid topic list
braid topic describe page.viewed

section "first records of page.viewed, with their partition, offset, append time and key"
braid consume page.viewed -n 3 --meta

section "a poison record waiting for the stream processor's dead-letter topic"
braid consume page.viewed | grep -av '"customer_id":"c-' | head -n 1 || true

section "page.viewed partition 0 from the first record appended at 09:00 (gen stamps simulated arrival times)"
braid consume page.viewed --partition 0 --from timestamp:2026-01-05T09:00:00Z -n 1 --meta
