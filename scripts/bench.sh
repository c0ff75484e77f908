#!/usr/bin/env bash
# Benchmarks: our figures beside their anchors, measured in one run.
# Usage: scripts/bench.sh [chain|net|vm]... [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet -p zennet-cli -p zennet-bench
exec target/release/zennet-bench "$@"
