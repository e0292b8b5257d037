#!/bin/sh
# Regenerates the TLS fixtures of the pinned-CA verifier tests with stock openssl.
# Two unrelated CAs, each with a leaf valid for 127.0.0.1 and localhost, valid for 100 years
# from generation; the tests verify at a fixed time inside that window.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkca() {
    openssl genpkey -algorithm ed25519 -out "$tmp/$1.key"
    openssl req -new -x509 -key "$tmp/$1.key" -subj "/CN=$1" -days 36500 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -outform DER -out "$1.der"
    openssl x509 -inform DER -in "$1.der" -out "$1.pem"
}

mkleaf() {
    openssl genpkey -algorithm ed25519 -out "$tmp/$2.key"
    openssl req -new -key "$tmp/$2.key" -subj "/CN=$2" -out "$tmp/$2.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$tmp/$2.ext"
    openssl x509 -req -in "$tmp/$2.csr" -CA "$1.der" -CAform DER -CAkey "$tmp/$1.key" \
        -CAcreateserial -CAserial "$tmp/serial" -days 36500 -extfile "$tmp/$2.ext" \
        -outform DER -out "$2.der"
}

mkca ca
mkleaf ca leaf
mkca other-ca
mkleaf other-ca other-leaf
