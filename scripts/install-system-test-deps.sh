#!/usr/bin/env bash
# Debian packages that the browser test needs. Installed only when missing and only as root;
# otherwise the tests that need them skip with a message that says so.
set -euo pipefail
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [ ${#packages[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not root or no apt-get; tests needing ${packages[*]} will be skipped" >&2
  exit 0
fi
echo "installing ${packages[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
