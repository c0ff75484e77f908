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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"

phase "heavy tests (once per pass: Spark and Dask across a market's TCG VMs)"
# images/tests/e2e_disk_images.rs (each engine inside one guest booted by
# hand) is covered by this one and stays for running by hand.
cargo test -p zennet-tests --test spark -- --ignored 2>&1 | tee -a "$log"
passed=$(awk '/^test result:/ {p += $4} END {print p + 0}' "$log")
failed=$(awk '/^test result:/ {f += $6} END {print f + 0}' "$log")

phase "fuzz (${FUZZ_SECONDS:=20}s per target)"
# cargo fuzz needs nightly-only flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them. One target dir for both fuzz crates: what they
# share (zennet-chain and its dependencies) is built once.
export CARGO_TARGET_DIR="$PWD/target/fuzz"
fuzz_log=$(mktemp)
for target in chain:decode_tx chain:decode_block chain:decode_snapshot chain:decode_sync \
    fs:decode_frame fs:parse_metainfo fs:decode_peer_wire fs:parse_tracker fs:decode_pos; do
  if ! (cd "${target%%:*}/fuzz" && RUSTC_BOOTSTRAP=1 cargo fuzz run "${target#*:}" --fuzz-dir . -- \
      -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 >"$fuzz_log" 2>&1); then
    grep -v '^#\|^INFO' "$fuzz_log" | head -n 40
    echo "fuzz $target: FAILED (the input is in ${target%%:*}/fuzz/artifacts/${target#*:}/)"
    exit 1
  fi
  echo "fuzz $target: $(tail -n 1 "$fuzz_log")"
done
rm -f "$fuzz_log"
echo "tests: $passed passed, $failed failed (${SECONDS}s in all)"
