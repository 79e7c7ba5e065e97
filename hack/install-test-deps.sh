#!/usr/bin/env bash
# Installs what the browser tests need on a bare Debian machine, and nothing
# when it is already there (a warm run prints nothing):
#   - Chromium and its driver from Debian's packages, when /usr/bin/chromium
#     or /usr/bin/chromedriver is missing;
#   - node and npm from Debian's packages, when npm is missing;
#   - haproxy from Debian's packages, when it is missing (test/scaleout runs
#     the replicas behind it, as a layer-4 load balancer);
#   - web/node_modules by `npm ci`, when it is missing or older than
#     web/package-lock.json.
# Runs as root (CI does); it needs root only for what apt has to install.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WEB="$ROOT/web"

apt_updated=""
apt_install() {
  if [[ $EUID -ne 0 ]]; then
    echo "install-test-deps: need root to apt-get install $*" >&2
    exit 1
  fi
  if [[ -z "$apt_updated" ]]; then
    echo ">> apt-get update" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  echo ">> apt-get install $*" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  # fonts-dejavu-core: the terminal's monospace font in screenshots.
  apt_install chromium chromium-driver fonts-dejavu-core
  echo ">> installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)" >&2
fi

if ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi

if ! command -v haproxy >/dev/null 2>&1 && [[ ! -x /usr/sbin/haproxy ]]; then
  apt_install haproxy
fi

# npm writes node_modules/.package-lock.json at the end of a good install.
stamp="$WEB/node_modules/.package-lock.json"
if [[ ! -f "$stamp" || "$WEB/package-lock.json" -nt "$stamp" ]]; then
  echo ">> npm ci in web/" >&2
  start=$SECONDS
  (cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
  echo ">> npm ci done in $((SECONDS - start))s" >&2
fi
