#!/usr/bin/env bash
# dealsd under a real systemd: boots a Debian 12 container (systemd 252) with
# systemd-nspawn, installs the checkout as systemd/README.md says and checks
# READY, STATUS=, the watchdog, reload, stop, failure handling, a Keepa outage
# and the hardening at run time. One line per check and a summary; exit 1 if
# any check failed. Where this machine cannot run it (not root, no nspawn, no
# container boots) it prints `skipped: <why>` and exits 0.
#
#   sudo bash systemd/test-under-systemd.sh     # the driver: test_under_systemd.py
#
# The container image is built once and cached in /var/lib/machines/dealsd-test
# (DEALSD_TEST_REBUILD=1 rebuilds it); each run boots it on a throw-away overlay.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" != 0 ]; then
  echo "skipped: needs root (debootstrap and systemd-nspawn)"
  exit 0
fi
py="$(command -v python3 || true)"
if [ -z "$py" ]; then
  echo "skipped: no python3 on this machine to drive the test"
  exit 0
fi
# A hung run fails alone instead of eating CI's time.
exec timeout --kill-after=30 "${DEALSD_TEST_TIMEOUT:-1500}" "$py" "$here/test_under_systemd.py" "$@"
