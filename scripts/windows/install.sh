#!/usr/bin/env bash
# Installs the given Debian packages unless they are installed already, robustly: an install interrupted earlier
# ("dpkg was interrupted, you must manually run 'dpkg --configure -a'") is finished first, and a failed
# `apt-get update`/`install` (a mirror hiccup, a lock held by another apt) is retried after repairing dpkg's state.
# Usage: install.sh PACKAGE...   (as root, or with sudo available)
set -euo pipefail
missing=()
for p in "$@"; do
  # `dpkg -s` succeeds for removed-but-configured and half-installed packages too; only "installed" counts.
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
((${#missing[@]})) || exit 0
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "install: ${missing[*]}" >&2
for attempt in 1 2 3; do
  "${sudo[@]}" dpkg --configure -a >&2 || true
  if "${sudo[@]}" apt-get update -qq >/dev/null &&
    "${sudo[@]}" apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      "${missing[@]}" >/dev/null; then
    exit 0
  fi
  echo "install: attempt $attempt failed; repairing dpkg and retrying" >&2
  "${sudo[@]}" apt-get install -f -y -qq >/dev/null 2>&1 || true
  sleep $((attempt * 10))
done
echo "install: could not install ${missing[*]}" >&2
exit 1
