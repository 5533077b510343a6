#!/usr/bin/env bash
# Test aid: a Docker engine and the base images for `pytest -m docker` (the compose stack test).
# Installs Debian's docker.io, docker-compose (v1) and debootstrap where they are missing, starts
# dockerd where none answers, then makes python:3.11-slim and postgres:15 available (pulled, or
# built as stand-ins by build.sh where Docker Hub cannot be reached).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "engine: installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "engine: starting dockerd (log: /var/log/dockerd-tests.log)"
  nohup dockerd >/var/log/dockerd-tests.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "engine: dockerd did not start" >&2; tail -20 /var/log/dockerd-tests.log >&2; exit 1; }
fi
echo "engine: $(docker version --format 'server {{.Server.Version}}')"
"$here/build.sh"
