#!/usr/bin/env bash
# Checks systemd/dealsd.service; exits non-zero if any check fails.
#
#   1. `systemd-analyze verify` is clean (no error, no warning about the unit).
#   2. `systemd-analyze security --offline=true` exposure <= 2.0
#      (override with DEALSD_MAX_EXPOSURE, e.g. for a stricter gate).
#   3. MemoryDenyWriteExecute=yes does not break dealsd's Python stack: a
#      smoke run (asyncio, aiohttp over loopback, sqlite3, msgspec, structlog,
#      the dealsd package) under the kernel's MDWE prctl, where available.
#
# Run from anywhere: `bash systemd/check.sh [UNIT_FILE]`. .ci/run calls it where
# systemd-analyze exists.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
unit="${1:-$here/dealsd.service}"  # another unit file may be given, for testing this script
max="${DEALSD_MAX_EXPOSURE:-2.0}"
python="${DEALSD_PYTHON:-$here/../.venv/bin/python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0

fail() { echo "check.sh: FAIL: $*" >&2; failed=1; }

# --- 1. verify --------------------------------------------------------------
# verify refuses a unit whose ExecStart binary does not exist, and on a build
# machine /opt/dealsd is not installed. So, unless it is installed, verify an
# identical copy whose ExecStart (and any other Exec*= line running the same
# binary, such as ExecReload's check-config) points at a stub script with the
# same arguments: every other directive is still checked. The copy keeps the
# name dealsd.service, and the substitution is asserted so it cannot silently
# miss or touch anything else.
exec_path="$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")"
[ -n "$exec_path" ] || fail "no ExecStart= in $unit"
target="$unit"
if [ ! -x "$exec_path" ]; then
  mkdir -p "$tmp/stub"
  printf '#!/bin/sh\nexit 0\n' >"$tmp/stub/dealsd"
  chmod +x "$tmp/stub/dealsd"
  sed "s|^\(Exec[A-Za-z]*=[-+!@:]*\)$exec_path |\1$tmp/stub/dealsd |" "$unit" >"$tmp/dealsd.service"
  if ! grep -q "^ExecStart=$tmp/stub/dealsd run " "$tmp/dealsd.service"; then
    fail "could not point ExecStart at the stub"
  fi
  naming="$(grep -c "^Exec[A-Za-z]*=[-+!@:]*$exec_path " "$unit" || true)"
  changed="$(diff "$unit" "$tmp/dealsd.service" | grep -c '^[<>]' || true)"
  [ "$changed" = "$((2 * naming))" ] ||
    fail "the verified copy differs in more than the $naming Exec lines naming $exec_path ($changed lines)"
  target="$tmp/dealsd.service"
  echo "check.sh: $exec_path is not installed: verifying a copy with a stub in its $naming Exec lines"
fi
if ! out="$(systemd-analyze verify "$target" 2>&1)"; then
  echo "$out" >&2
  fail "systemd-analyze verify failed"
else
  # verify also loads the system's units (multi-user.target ...): their
  # warnings are not ours, but anything naming this unit is.
  ours="$(printf '%s\n' "$out" | grep -F 'dealsd.service' || true)"
  if [ -n "$ours" ]; then
    echo "$ours" >&2
    fail "systemd-analyze verify warned about dealsd.service"
  else
    echo "check.sh: verify: clean"
  fi
fi

# --- 2. security exposure ---------------------------------------------------
sec="$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1 || true)"
exposure="$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
if [ -z "$exposure" ]; then
  echo "$sec" >&2
  fail "no exposure figure from systemd-analyze security"
elif awk -v e="$exposure" -v m="$max" 'BEGIN { exit !(e + 0 <= m + 0) }'; then
  echo "check.sh: security: exposure $exposure (limit $max)"
else
  printf '%s\n' "$sec" | grep '✗' >&2 || true
  fail "exposure $exposure is above $max"
fi

# --- 3. Python under MemoryDenyWriteExecute ---------------------------------
# systemd enforces MemoryDenyWriteExecute with seccomp (newer versions with
# the same kernel MDWE prctl used here): no mapping may be writable and
# executable, or become executable. A JIT or a W+X libffi closure would die.
if [ ! -x "$python" ]; then
  echo "check.sh: mdwe: skipped ($python not found; set DEALSD_PYTHON)"
else
  cat >"$tmp/smoke.py" <<'PY'
import asyncio, mmap, sqlite3, sys
import aiohttp, msgspec, structlog
from aiohttp import web
import dealsd

# The guard must really be on, or this check proves nothing.
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("mdwe smoke: a W+X mapping was allowed: MDWE is not in force")
except PermissionError:
    pass

async def main() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"tokensLeft": 5, "refillRate": 5})
    app = web.Application()
    app.router.add_get("/token", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/token") as r:
            body = await r.read()
    await runner.cleanup()
    assert msgspec.json.decode(body)["tokensLeft"] == 5

asyncio.run(main())
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (x)")
db.execute("INSERT INTO t VALUES (1)")
db.commit()
structlog.get_logger("check").info("mdwe_smoke_ok", dealsd=dealsd.__name__)
PY
  cat >"$tmp/mdwe.py" <<'PY'
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("check.sh: mdwe: skipped (kernel without PR_SET_MDWE, Linux < 6.3)")
    sys.exit(0)
# MDWE survives execve: the smoke starts in a fresh, guarded interpreter.
os.execv(sys.argv[1], [sys.argv[1], *sys.argv[2:]])
PY
  if out="$("$python" "$tmp/mdwe.py" "$python" "$tmp/smoke.py" "$tmp/smoke.db" 2>&1)"; then
    case "$out" in
      *skipped*) echo "$out" ;;
      *mdwe_smoke_ok*) echo "check.sh: mdwe: Python stack runs with W+X memory refused" ;;
      *) echo "$out" >&2; fail "mdwe smoke printed nothing expected" ;;
    esac
  else
    echo "$out" >&2
    fail "dealsd's Python stack does not run under MemoryDenyWriteExecute"
  fi
fi

if [ "$failed" != 0 ]; then
  exit 1
fi
echo "check.sh: ok"
