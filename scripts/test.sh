#!/usr/bin/env bash
# Set-up + the whole test suite (one build profile: the test profile).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo fmt --all -- --check 2>/dev/null || { echo "test.sh: cargo fmt --check reports unformatted code" >&2; exit 1; }
if [ -z "${BRAID_FLUVIO_ENDPOINT:-}" ]; then
  echo "test.sh: BRAID_FLUVIO_ENDPOINT is not set: Fluvio-backed tests will report themselves as skipped" >&2
fi
cargo test --locked --all-targets "$@"
