#!/usr/bin/env bash
# Set-up + the whole test suite (one build profile: the test profile).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo fmt --all -- --check 2>/dev/null || { echo "test.sh: cargo fmt --check reports unformatted code" >&2; exit 1; }
if [ -z "${BRAID_FLUVIO_ENDPOINT:-}" ]; then
  echo "test.sh: BRAID_FLUVIO_ENDPOINT is not set: Fluvio-backed tests will report themselves as skipped" >&2
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
cargo test --locked --all-targets "$@" 2>&1 | tee "$out" || status=$?
# One closing line over every test binary (criterion benches run once each, as smoke tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
# Each fuzz target briefly, when cargo-fuzz is installed (scripts/fuzz.sh says so when not).
if [ "$status" -eq 0 ]; then
  bash scripts/fuzz.sh "${BRAID_FUZZ_SECONDS:-30}" || status=$?
fi
exit "$status"
