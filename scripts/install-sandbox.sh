#!/usr/bin/env bash
# Installs what Claude Code's Bash sandbox needs on Linux, from the distribution: bubblewrap
# (bwrap) and socat (its network proxy). Multi-tenant hosts switch the sandbox on per tenant
# where it works (docs/security.md); the security tests measure it. Needs root or sudo.
set -euo pipefail
if command -v bwrap >/dev/null 2>&1 && command -v socat >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "bubblewrap/socat are missing and this user cannot install them: apt-get install bubblewrap socat" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq bubblewrap socat >/dev/null
command -v bwrap socat
