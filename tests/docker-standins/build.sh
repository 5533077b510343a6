#!/usr/bin/env bash
# Test aid: make `python:3.11-slim` and `postgres:15` available to `docker build` / compose on a
# machine that cannot reach Docker Hub. See README.md beside this file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
force=0
[[ "${1:-}" == "--force" ]] && force=1

have() { docker image inspect "$1" >/dev/null 2>&1; }

need=()
for image in python:3.11-slim postgres:15; do
  if [[ $force == 0 ]] && have "$image"; then
    echo "stand-ins: $image present"
  elif [[ $force == 0 ]] && timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
    echo "stand-ins: $image pulled (official)"
  else
    need+=("$image")
  fi
done
[[ ${#need[@]} == 0 ]] && exit 0

if [[ $force == 1 ]] || ! have local/debian:bookworm; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "stand-ins: debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - local/debian:bookworm >/dev/null
  echo "stand-ins: local/debian:bookworm imported"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx" "${root:-}"' EXIT
cp "$here"/*.Dockerfile "$here"/postgres-entrypoint.sh "$ctx"/
# The host's CA bundle (it may hold a proxy's CA that pip must trust inside builds).
cp /etc/ssl/certs/ca-certificates.crt "$ctx"/host-ca.crt
for image in "${need[@]}"; do
  case "$image" in
    python:3.11-slim) file=python.Dockerfile ;;
    postgres:15) file=postgres.Dockerfile ;;
  esac
  echo "stand-ins: building $image (stand-in)"
  docker build -q -f "$ctx/$file" -t "$image" "$ctx" >/dev/null
done
echo "stand-ins: ready"
