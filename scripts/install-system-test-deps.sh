#!/usr/bin/env bash
# Debian packages some tests need: Chromium (browser test), PostgreSQL and Redis (scale-out test),
# docker-compose (validates docker-compose.yaml without a daemon). Installed only when missing and only
# as root; otherwise the tests that need them skip with a message that says so.
set -euo pipefail
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
if [ ${#packages[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not root or no apt-get; tests needing ${packages[*]} will be skipped" >&2
  exit 0
fi
echo "installing ${packages[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The Debian packages start their servers as services; the tests start their own on free ports.
(service postgresql stop || true) >/dev/null 2>&1
(service redis-server stop || true) >/dev/null 2>&1
