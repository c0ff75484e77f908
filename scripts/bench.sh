#!/usr/bin/env bash
# Benchmarks: our figures beside their anchors, measured in one run.
# Usage: scripts/bench.sh [chain|net|host|vm|jobs|lan|market|fs|bt|ops|pos]... [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The anchors measured beside our figures.
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
if ! command -v sysbench >/dev/null; then
  $SUDO apt-get install -y -qq sysbench
fi
# The file network's anchor server (the client, aria2c, comes with
# setup.sh: the stock-client tests run it too).
command -v nginx >/dev/null || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
if [ ! -x /usr/sbin/sshd ]; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server
fi
cargo build --release --quiet -p zennet-cli -p zennet-bench
exec "${CARGO_TARGET_DIR:-target}/release/zennet-bench" "$@"
