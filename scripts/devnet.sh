#!/usr/bin/env bash
# The main job: a whole local Zennet network on embedded defaults.
# Installs what it needs, builds zennet (release) and runs `zennet devnet`.
# Extra arguments go to `zennet devnet` (e.g. --providers 3, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet -p zennet-cli
exec "${CARGO_TARGET_DIR:-target}/release/zennet" devnet "$@"
