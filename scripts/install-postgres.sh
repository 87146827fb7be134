#!/usr/bin/env bash
# Installs Debian's Postgres server for the registry's and the cluster's tests (needs root or
# sudo). The tests start their own private server from these binaries (see
# src/hotsession/testing/postgres.py); the package's own cluster is not used.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "postgres is missing and this user cannot install it: apt-get install postgresql" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb"
