#!/usr/bin/env bash
# Installs what building and running zennet needs on a fresh Debian machine.
# Safe to run again: it only installs what is missing.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# What the VM runtime and its tests need (images/HOST-PACKAGES lists them).
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
host_packages=$(grep -v '^#' "$(dirname "$0")/../images/HOST-PACKAGES")
missing_packages() {
  for p in $host_packages; do
    # No pipe into `grep -q`: with pipefail, grep leaving early makes a
    # long `dpkg -s` (prometheus') die of SIGPIPE and look uninstalled.
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || echo "$p"
  done
}
# Images are built from .deb files apt downloads, so its lists must exist.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
# Two passes: installing one package can remove another that conflicts
# with it (a backported qemu-utils goes when the distribution's QEMU
# comes), so what the first pass removed is put back, aligned, in the second.
for pass in 1 2; do
  missing=($(missing_packages))
  [ ${#missing[@]} -eq 0 ] && break
  echo "setup: installing ${missing[*]}" >&2
  [ "$pass" -eq 1 ] && $SUDO apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -qq "${missing[@]}"; then
    # Some machines carry a backported qemu-utils that conflicts with the
    # distribution's QEMU: align it to the QEMU being installed.
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    $SUDO apt-get install -y -qq --allow-downgrades "${missing[@]}" "qemu-utils=$ver"
  fi
done
missing=($(missing_packages))
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: could not install ${missing[*]}; install them with apt-get and run again" >&2
  exit 1
fi

# Python tools the tests run, from PyPI, in a venv of their own (Debian's
# python3 refuses pip installs into the system; the venv needs python3-venv
# from HOST-PACKAGES). ssh-audit grades the publisher's SSH server.
TOOLS=${ZENNET_TOOLS:-/opt/zennet-tools}
if [ ! -x "$TOOLS/bin/ssh-audit" ]; then
  echo "setup: installing ssh-audit into $TOOLS" >&2
  $SUDO python3 -m venv "$TOOLS"
  $SUDO "$TOOLS/bin/pip" install -q ssh-audit==3.9.0
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install Rust (stable) with rustup first" >&2
  exit 1
fi
