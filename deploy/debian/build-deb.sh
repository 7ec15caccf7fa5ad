#!/usr/bin/env bash
# Builds the Debian package of lb-node: lb-node and lbctl in /usr/bin, the
# systemd unit, a system user "lb-node", /etc/lb-node with the example
# configuration (conffiles) and a certificate directory the service can
# read, the docs in /usr/share/doc/lb-node.
#
#   deploy/debian/build-deb.sh [BIN_DIR [OUT_DIR]]
#
# BIN_DIR holds built lb-node and lbctl (default target/release: run
# `cargo build --release --workspace --bins` first); OUT_DIR gets
# lb-node_VERSION_ARCH.deb (default target/debian). Prints the package's
# path. Needs dpkg-deb (Debian's dpkg) and strip (binutils, if present).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bins=${1:-$root/target/release}
out=${2:-$root/target/debian}
for b in lb-node lbctl; do
  if [ ! -x "$bins/$b" ]; then
    echo "build-deb: $bins/$b is missing: run cargo build --release --workspace --bins first" >&2
    exit 2
  fi
done
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/lb-node"

install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/etc/lb-node" "$pkg/usr/share/doc/lb-node/examples" "$pkg/usr/share/lb-node"
install -m 0755 "$bins/lb-node" "$bins/lbctl" "$pkg/usr/bin/"
# As Debian's packages are: without debug information (binutils' strip).
if command -v strip >/dev/null; then
  strip --strip-debug "$pkg/usr/bin/lb-node" "$pkg/usr/bin/lbctl"
fi
install -m 0644 "$root/deploy/systemd/lb-node.service" "$pkg/lib/systemd/system/"
# The configuration an operator starts from: a standalone member serving
# the example services file (edit both; docs/operations.md).
install -m 0644 "$root/deploy/examples/standalone.toml" "$pkg/etc/lb-node/lb-node.toml"
install -m 0644 "$root/deploy/examples/services.toml" "$pkg/etc/lb-node/services.toml"
install -m 0755 "$root/deploy/tls/make-certs.sh" "$pkg/usr/share/lb-node/"
install -m 0644 "$root/README.md" "$pkg/usr/share/doc/lb-node/"
cp -r "$root/docs" "$pkg/usr/share/doc/lb-node/docs"
cp -r "$root/deploy/examples/." "$pkg/usr/share/doc/lb-node/examples/"
find "$pkg/usr/share/doc" -type d -exec chmod 0755 {} +
find "$pkg/usr/share/doc" -type f -exec chmod 0644 {} +
install -m 0755 "$here/postinst" "$here/postrm" "$pkg/DEBIAN/"
printf '/etc/lb-node/lb-node.toml\n/etc/lb-node/services.toml\n' > "$pkg/DEBIAN/conffiles"
size=$(du -ks "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
  "$here/control.in" > "$pkg/DEBIAN/control"
mkdir -p "$out"
deb="$out/lb-node_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
echo "$deb"
