#!/usr/bin/env bash
# Install Debian's Chromium for the console's browser tests (tests/test_console_browser.py),
# only when it is missing and we are root (CI runs as root on a fresh machine).
# A no-op when /usr/bin/chromium exists; elsewhere the browser tests skip with a message.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "ensure_browser: /usr/bin/chromium missing and cannot apt-get install it;" \
    "the browser tests will be skipped" >&2
  exit 0
fi
echo "ensure_browser: installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
