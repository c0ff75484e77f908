#!/usr/bin/env bash
# Builds the Debian package target/debian/zennet_<version>_<arch>.deb:
# /usr/bin/zennet, the systemd unit (installed, not enabled: the home must
# be initialised first), the copyright file. Plain dpkg-deb, no cargo-deb.
# ZENNET_BIN=PATH packages that binary instead of building a release one
# (the packaging test passes the debug binary it already has). Prints the
# path of the .deb.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

version=$(awk '
  /^\[workspace\.package\]/ { in_section = 1; next }
  /^\[/ { in_section = 0 }
  in_section && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' Cargo.toml)
[ -n "$version" ] || { echo "package: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
target=${CARGO_TARGET_DIR:-$root/target}

bin=${ZENNET_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet -p zennet-cli --bin zennet
  bin=$target/release/zennet
fi
[ -x "$bin" ] || { echo "package: $bin is not an executable" >&2; exit 1; }

out=$target/debian
stage=$out/zennet_${version}_${arch}
deb=$out/zennet_${version}_${arch}.deb
rm -rf "$stage"
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
  "$stage/usr/share/doc/zennet"
# Debug information goes, as in Debian's own packages (symbols stay, so
# backtraces still name functions).
strip --strip-debug -o "$stage/usr/bin/zennet" "$bin"
chmod 0755 "$stage/usr/bin/zennet"
install -m 0644 deploy/zennet.service "$stage/lib/systemd/system/zennet.service"

cat >"$stage/usr/share/doc/zennet/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: zennet

Files: *
Copyright: the Zennet developers
License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may
 not use this file except in compliance with the License. Unless required
 by applicable law or agreed to in writing, software distributed under the
 License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR
 CONDITIONS OF ANY KIND, either express or implied.
 .
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
chmod 0644 "$stage/usr/share/doc/zennet/copyright"

# What the node runs at run time (images/HOST-PACKAGES less what only the
# tests use): QEMU and qemu-img, ssh and ssh-keygen, mke2fs and debugfs
# (volumes, image disks), ip and tc (guest networks), nft, and apt-get and
# dpkg-deb for `zennet image build` (dpkg is essential).
cat >"$stage/DEBIAN/control" <<EOF
Package: zennet
Version: $version
Architecture: $arch
Maintainer: ${ZENNET_MAINTAINER:-Zennet developers <maintainers@zennet.invalid>}
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: qemu-system-x86, qemu-utils, openssh-client, e2fsprogs, iproute2, nftables, apt
Section: net
Priority: optional
Description: node of Zennet, a free market of virtual machines and files
 One zennet binary: a node of Zennet's proof-of-work chain, the provider
 agent that runs QEMU VMs for tasks under cgroups and is paid through
 payment channels, the publisher, and the file network.
 .
 zennet.service runs a provider node on /var/lib/zennet. It is installed,
 not enabled: create the home with "zennet --home /var/lib/zennet init
 --genesis FILE", then "systemctl enable --now zennet".
EOF

# systemd learns of the unit; enabling it stays the operator's call.
cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
EOF
# The node stops with its package (its VMs keep running, as on any stop).
cat >"$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop zennet.service || true
fi
EOF
cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

dpkg-deb --build --root-owner-group "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "$deb"
