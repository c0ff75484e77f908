#!/usr/bin/env bash
# Runs every test: formatting and lints, unit, property and end-to-end tests,
# and a bounded run of each fuzz target. Installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz

phase() { echo "== $1 (at ${SECONDS}s)"; }
phase "fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

phase "tests"
# The end-to-end tests run the binary this build makes (cli/tests/help.rs
# has cargo build it with the tests' features) instead of building
# `zennet-cli` a second time with its own.
export ZENNET_BIN="$PWD/target/debug/zennet"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"

phase "heavy tests (once per pass: Spark and Dask across a market's TCG VMs)"
# images/tests/e2e_disk_images.rs (each engine inside one guest booted by
# hand) is covered by this one and stays for running by hand.
# --workspace, as above: features resolve as for the tests, so little is
# built again (with -p zennet-tests, libp2p and rustls were).
cargo test --workspace --test spark -- --ignored 2>&1 | tee -a "$log"
passed=$(awk '/^test result:/ {p += $4} END {print p + 0}' "$log")
failed=$(awk '/^test result:/ {f += $6} END {print f + 0}' "$log")

phase "fuzz (${FUZZ_SECONDS:=20}s per target, two at a time)"
# cargo fuzz needs nightly-only flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them. One target dir for both fuzz crates: what they
# share (zennet-chain and its dependencies) is built once, each crate's
# targets in one build. The build is a debug one (overflow checks and
# debug assertions on) without AddressSanitizer: the decoders are safe
# Rust, and the optimised ASan build took 12.6 min of CI against 3.7 min,
# for twice the runs per second at most.
export CARGO_TARGET_DIR="$PWD/target/fuzz" RUSTC_BOOTSTRAP=1 FUZZ_SECONDS
fuzz_flags="--fuzz-dir . --dev --sanitizer none"
for crate in chain fs; do
  (cd "$crate/fuzz" && cargo fuzz build $fuzz_flags)
done
# Each run is one process on one core: two run side by side.
fuzz_one() {
  local crate=${1%%:*} target=${1#*:} log
  log=$(mktemp)
  if ! (cd "$crate/fuzz" && cargo fuzz run $fuzz_flags "$target" -- \
      -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 >"$log" 2>&1); then
    grep -v '^#\|^INFO' "$log" | head -n 40
    echo "fuzz $1: FAILED (the input is in $crate/fuzz/artifacts/$target/)"
    rm -f "$log"
    return 1
  fi
  echo "fuzz $1: $(tail -n 1 "$log")"
  rm -f "$log"
}
export -f fuzz_one
export fuzz_flags
printf '%s\n' chain:decode_tx chain:decode_block chain:decode_snapshot chain:decode_sync \
    fs:decode_frame fs:parse_metainfo fs:decode_peer_wire fs:parse_tracker fs:decode_pos |
  xargs -P 2 -I{} bash -c 'fuzz_one {}' || exit 1
echo "tests: $passed passed, $failed failed (${SECONDS}s in all)"
