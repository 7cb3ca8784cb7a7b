#!/usr/bin/env bash
# Runs every benchmark and prints the markdown report of BENCHMARKS.md.
#   bash bench/run.sh          full run (a few minutes), then the criterion micro-benchmarks
#   bash bench/run.sh smoke    every part for a fraction of a second (CI; asserts no speed)
#   bash bench/run.sh revoke   only the revocation part at full size (several minutes)
#   bash bench/run.sh redis    only the Redis part at full size (a few minutes)
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-all}"
# The peer is its own workspace (sqlx 0.8); it shares this target directory.
cargo build --release --quiet --manifest-path peer/Cargo.toml --target-dir target
cargo build --release --quiet --manifest-path Cargo.toml
./target/release/session-bench "$mode" --peer target/release/session-bench-peer
if [ "$mode" = all ]; then
    cargo bench --quiet --manifest-path Cargo.toml --bench micro -- --warm-up-time 1 --measurement-time 3
fi
