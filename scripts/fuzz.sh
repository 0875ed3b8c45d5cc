#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS each (default 60): the record decoder, the
# topology parser/validator, the embedded log's segment reader and tail recovery.
# Usage: scripts/fuzz.sh [SECONDS]   e.g. scripts/fuzz.sh 600 for the 10-minute runs.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); without it this says so and exits 0.
# cargo-fuzz passes nightly-only compiler flags (sanitizer coverage); the one stable
# toolchain here accepts them with RUSTC_BOOTSTRAP=1. The fuzz crate (fuzz/) builds with
# its own target directory, RocksDB included, so the first build takes a while.
# New inputs go to fuzz/corpus/<target> (not committed); crashes to fuzz/artifacts/.
# Seeds worth keeping are committed under fuzz/seeds/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
each="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo fuzz not available: fuzzing skipped (install it with: cargo install cargo-fuzz)"
  exit 0
fi
export RUSTC_BOOTSTRAP=1
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}-fuzz}"
cd fuzz
cargo fuzz build -O --target-dir "$target_dir"
for t in decode topology segment; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${each}s"
  cargo fuzz run -O --target-dir "$target_dir" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$each" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 2>&1 |
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|==[0-9]+==)|Done [0-9]+ runs" || true
  if ls "artifacts/$t"/crash-* "artifacts/$t"/timeout-* "artifacts/$t"/oom-* >/dev/null 2>&1; then
    echo "fuzz: $t found a failing input under fuzz/artifacts/$t" >&2
    exit 1
  fi
done
