#!/usr/bin/env bash
# Makes a lab certificate authority, one certificate per member (for both
# its admin and its peer port, server and client), and one client
# certificate for lbctl. For a lab: in production, use your own CA.
#
#   deploy/tls/make-certs.sh OUT_DIR MEMBER_ID... [-- EXTRA_SAN...]
#   /usr/share/lb-node/make-certs.sh ...      (as the package installs it)
#   deploy/tls/make-certs.sh /etc/lb-node/tls 1 2 3 -- IP:10.0.0.1 IP:10.0.0.2 IP:10.0.0.3
#
# Writes OUT_DIR/ca.pem (and ca-key.pem: keep it offline), member-N.pem and
# member-N-key.pem, lbctl.pem and lbctl-key.pem. Where the group lb-node
# exists (the package made it), ca.pem and the member files get that group
# and mode 0640, so the service (user lb-node) reads them; the CA key and
# lbctl's key stay 0600, the owner's. Every member certificate
# names "lb-node", "member-N" (required: the peer port checks it), localhost
# and 127.0.0.1, plus EXTRA_SANs
# (give each member's address there); clients check the name "lb-node".
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n "2,17p" "$0" >&2
  exit 2
fi
out=$1; shift
ids=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do ids+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
extra=""
for san in "$@"; do extra="$extra,$san"; done
mkdir -p "$out"
cd "$out"
umask 077
days=825

if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca-key.pem -out ca.pem -days "$days" -subj "/CN=lb-node lab CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

issue() { # name cn san
  local name=$1 cn=$2 san=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$name-key.pem" -out "$name.csr" -subj "/CN=$cn" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -out "$name.pem" -days "$days" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

for id in "${ids[@]}"; do
  issue "member-$id" "member-$id" "DNS:lb-node,DNS:member-$id,DNS:localhost,IP:127.0.0.1$extra"
done
issue lbctl lbctl "DNS:lbctl"
if getent group lb-node >/dev/null; then
  for id in "${ids[@]}"; do
    chgrp lb-node "member-$id.pem" "member-$id-key.pem"
    chmod 0640 "member-$id.pem" "member-$id-key.pem"
  done
  chgrp lb-node ca.pem
  chmod 0640 ca.pem
fi
echo "certificates in $out: ca.pem, $(printf 'member-%s.pem ' "${ids[@]}")lbctl.pem"
