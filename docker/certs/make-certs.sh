#!/bin/sh
# Compose's one-shot `certs` service: at the first start, a private CA and a
# certificate for each server (kafka-1..3, redis, postgres) into the `certs`
# volume; later starts find them and do nothing. The CA's key never leaves
# the volume's ca/ directory (root only). Each server's key is readable by
# that server's user alone; ca.crt is what the clients verify against.
set -eu
out="${CERTS_DIR:-/certs}"
if [ -s "$out/ca.crt" ]; then
  echo "certificates present in $out"
  exit 0
fi
umask 077
mkdir -p "$out/ca"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/ca/ca.key"
openssl req -x509 -new -key "$out/ca/ca.key" -sha256 -days 3650 \
  -subj "/CN=coupon-engine compose CA" -out "$out/ca.crt"

# name uid:gid; the certificate's CN and DNS name are the compose host name.
issue() {
  name="$1" owner="$2"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "/CN=$name" -out "$out/ca/$name.csr"
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' "$name" >"$out/ca/$name.ext"
  openssl x509 -req -in "$out/ca/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca/ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile "$out/ca/$name.ext" -out "$out/$name.crt"
  # Kafka reads a PEM key store: the key, then the chain.
  cat "$out/$name.key" "$out/$name.crt" "$out/ca.crt" >"$out/$name.pem"
  chown "$owner" "$out/$name.key" "$out/$name.pem"
  chmod 600 "$out/$name.key" "$out/$name.pem"
  chmod 644 "$out/$name.crt"
}
# The images' own users: apache/kafka's appuser, redis, postgres.
for n in 1 2 3; do issue "kafka-$n" 1000:1000; done
issue redis 999:1000
issue postgres 70:70
chmod 644 "$out/ca.crt"
chmod 755 "$out"
echo "certificates written to $out"
