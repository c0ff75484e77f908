#!/usr/bin/env bash
# Benchmarks: our figures beside their anchors, measured in one run.
# Usage: scripts/bench.sh [chain|net|host|vm]... [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The anchors measured beside our figures.
if ! command -v sysbench >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get install -y -qq sysbench
fi
cargo build --release --quiet -p zennet-cli -p zennet-bench
exec target/release/zennet-bench "$@"
