#!/usr/bin/env python3
"""dealsd under a real systemd: boot a Debian 12 container, install, check.

Run as root: `bash systemd/test-under-systemd.sh` (this file is its driver;
stdlib only, and it never imports dealsd: it only calls the `dealsd` console
script inside the container).

1. Builds, once, a Debian 12 (bookworm) tree with systemd 252 and python3 in
   /var/lib/machines/dealsd-test (debootstrap from the Debian mirror the
   host's apt uses; rebuilt when RECIPE below changes or
   DEALSD_TEST_REBUILD=1). The venv with dealsd's dependencies is cached in it.
2. Boots it with systemd-nspawn on a throw-away overlay (--volatile=overlay:
   nothing a run does is kept), cgroup v2 inside, CAP_BPF and bpf(2) allowed
   so that IPAddressDeny= is really enforced.
3. Installs the working tree as systemd/README.md says (/opt/dealsd/src,
   /opt/dealsd/.venv, /etc/dealsd/config.toml, the key file, the unit), with
   a test drop-in that shortens WatchdogSec= and RestartSec= only, and runs
   `dealsd simulator` as a second unit on 127.0.0.1 (the container shares the
   host's loopback; no traffic goes anywhere else). Last, dealsd-web.service
   with the web extra, as systemd/README.md's "The web view" says.
4. Prints `PASS name`, `FAIL name: why` or `SKIP name: why` per check and a
   summary line; exits 1 if any check failed. Where this machine cannot run
   it at all (not root, no nspawn, no container boots) it prints one line
   `skipped: <why>` and exits 0.

Environment: DEALSD_TEST_IMAGE (image path), DEALSD_TEST_REBUILD=1,
DEALSD_TEST_OUTAGE_S (default 120), DEALSD_TEST_LOG (where the container's
journal is saved, default /tmp/dealsd-test-under-systemd.log),
DEALSD_TEST_KEEP=1 (leave the container running at the end, for debugging).
"""

from __future__ import annotations

import configparser
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGE = Path(os.environ.get("DEALSD_TEST_IMAGE", "/var/lib/machines/dealsd-test"))
SUITE = "bookworm"  # Debian 12, systemd 252
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates",
    "bpftool",
    # /bin/kill, which the unit's ExecReload= runs (any standard Debian has it;
    # minbase does not).
    "procps",
]
# Bump to rebuild cached images (changes the stamp file's content).
RECIPE = f"3 {SUITE} minbase {' '.join(PACKAGES)} venv=/opt/dealsd/.venv[web]"
STAMP = ".dealsd-test-image"
UNIT = "dealsd"
WEB_UNIT = "dealsd-web"
WEB_PORT = 8001  # the unit's own
DATABASE = "/var/lib/dealsd/deals.db"
SIM_UNIT = "keepa-sim"
WATCHDOG_S = 6  # the test drop-in's WatchdogSec= (the unit ships 120)
RESTART_S = 2  # the test drop-in's RestartSec= (the unit ships 5)
OUTAGE_S = int(os.environ.get("DEALSD_TEST_OUTAGE_S", "120"))
LOG_PATH = Path(os.environ.get("DEALSD_TEST_LOG", "/tmp/dealsd-test-under-systemd.log"))
MAX_EXPOSURE = float(os.environ.get("DEALSD_MAX_EXPOSURE", "2.0"))
VENV = "/opt/dealsd/.venv"
CONF = "/etc/dealsd/config.toml"
KEY = "/etc/dealsd/keepa_api_key"
IN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

T_START = time.monotonic()


def say(line: str) -> None:
    print(line, flush=True)


def note(line: str) -> None:
    """Progress, on stderr so stdout stays the check list."""
    print(f"[{time.monotonic() - T_START:6.1f}s] {line}", file=sys.stderr, flush=True)


def skip(why: str) -> None:
    say(f"skipped: {why}")
    sys.exit(0)


def run(cmd: list[str], *, timeout: float = 600, input: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env)
    return subprocess.CompletedProcess(
        p.args, p.returncode,
        p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"),
    )


# --- the host: what it has, which mirror and index it uses ------------------

def host_mirror() -> str | None:
    """The Debian archive URI the host's apt uses (not the security archive)."""
    found: list[tuple[str, list[str]]] = []  # (uri, suites)
    d = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *sorted(d.glob("*.list")), *sorted(d.glob("*.sources"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    found.append((uri, fields.get("suites", "").split()))
        else:
            for line in text.splitlines():
                line = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()  # type: ignore[assignment]
                if len(line) >= 3 and line[0] == "deb":
                    found.append((line[1], [line[2]]))
    for uri, suites in found:
        if SUITE in suites and uri.startswith(("http://", "https://")):
            return uri
    for uri, suites in found:  # a Debian host of another release: same archive
        if uri.startswith(("http://", "https://")) and not any("security" in s for s in suites) \
                and "security" not in uri:
            return uri
    return None


def host_pip_config() -> tuple[dict[str, str], bytes | None]:
    """How the host's pip reaches its index: http(s) index URLs, CA bundle, timeout.

    Read from the same places pip reads (global files, user files, then
    $PIP_*), keeping only what makes sense in another root: local paths and
    file:// indexes are dropped, the CA bundle's content is copied.
    """
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"),
             Path.home() / ".pip/pip.conf", Path.home() / ".config/pip/pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    values: dict[str, str] = {}
    for f in files:
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(f)
        except (configparser.Error, OSError):
            continue
        for section in ("global", "install"):
            if cp.has_section(section):
                for k, v in cp.items(section):
                    values[k.replace("_", "-")] = v
    for k, v in os.environ.items():
        if k.startswith("PIP_"):
            values[k[4:].lower().replace("_", "-")] = v
    out: dict[str, str] = {}
    for key in ("index-url", "extra-index-url"):
        urls = [u for u in values.get(key, "").split() if u.startswith(("http://", "https://"))]
        if urls:
            out[key] = " ".join(urls)
    for key in ("trusted-host", "proxy"):
        if values.get(key):
            out[key] = values[key]
    timeout = values.get("default-timeout") or values.get("timeout")
    if timeout:
        out["timeout"] = timeout
    cert: bytes | None = None
    for c in (values.get("cert"), os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE")):
        if c and Path(c).is_file():
            cert = Path(c).read_bytes()
            break
    return out, cert


def ensure_tools() -> None:
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(t) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        skip(f"{', '.join(missing)} missing and no apt-get to install them")
    note(f"installing {' '.join(missing)} (debootstrap systemd-container)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run(["apt-get", "update", "-qq"], env=env)
    if r.returncode == 0:
        r = run(["apt-get", "install", "-y", "-qq", "debootstrap", "systemd-container",
                 "util-linux"], env=env)
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(t) is None]
    if missing:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        skip(f"cannot install {', '.join(missing)} with apt-get: {tail[0]}")


# --- the checkout ------------------------------------------------------------

def checkout_tar() -> bytes:
    """The working tree as git sees it (tracked and untracked, not ignored)."""
    names: list[str]
    r = run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if r.returncode == 0:
        names = sorted({n for n in r.stdout.split("\0") if n})
    else:
        names = []
        skip_dirs = {".git", ".venv", "__pycache__", "build", "dist"}
        for root, dirs, fs in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in skip_dirs and not d.endswith(".egg-info")]
            names += [str(Path(root, f).relative_to(REPO)) for f in fs]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in names:
            p = REPO / n
            if p.is_file() and not p.is_symlink():
                tar.add(p, arcname=n, recursive=False)
    return buf.getvalue()


# --- the container -----------------------------------------------------------

class Container:
    def __init__(self, root: Path, log: Path, *, unified: bool) -> None:
        self.root = root
        self.log = log
        self.unified = unified
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None

    def boot(self, timeout: float = 90) -> str | None:
        """Boot; None when up, else why not."""
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if self.unified:
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        cmd = ["systemd-nspawn", "--quiet", "-D", str(self.root), "--volatile=overlay", "-b",
               "--register=no", "--keep-unit", "--console=pipe", "--resolv-conf=copy-host",
               "--machine=dealsd-test", "--capability=CAP_BPF", "--system-call-filter=bpf"]
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"systemd-nspawn exited {self.proc.returncode} ({self._log_tail()})"
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None:
                r = self.sh("systemctl is-system-running", timeout=10)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return None
            time.sleep(0.5)
        return f"not booted within {timeout:.0f}s (state {state or 'unknown'}; {self._log_tail()})"

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                st = (p / "stat").read_text()
            except OSError:
                continue
            fields = st.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.proc.pid:
                return int(p.name)
        return None

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        return " | ".join(lines[-3:])[-300:] or "no output"

    def exec(self, argv: list[str], *, timeout: float = 120, input: bytes | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        assert self.leader is not None
        envv = [f"{k}={v}" for k, v in {"PATH": IN_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
                                        "SYSTEMD_COLORS": "0", **(env or {})}.items()]
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i", *envv, *argv]
        try:
            return run(cmd, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout}s")

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.exec(["/bin/sh", "-c", script], **kw)

    def put(self, path: str, data: str | bytes, mode: str = "0644") -> None:
        raw = data.encode() if isinstance(data, str) else data
        r = self.exec(["/bin/sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                       "sh", path, mode], input=raw)
        if r.returncode != 0:
            raise RuntimeError(f"writing {path}: {r.stderr.strip()}")

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn: an orderly poweroff
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def pip_conf(cfg: dict[str, str], have_cert: bool) -> str:
    lines = ["# written by systemd/test_under_systemd.py from the host's pip settings", "[global]",
             "disable-pip-version-check = true"]
    lines += [f"{k} = {v}" for k, v in cfg.items()]
    if have_cert:
        lines.append("cert = /etc/dealsd-test/pip-ca.pem")
    return "\n".join(lines) + "\n"


def proxy_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}


def write_pip_setup(root_put: Any) -> None:
    cfg, cert = host_pip_config()
    if cert is not None:
        root_put("/etc/dealsd-test/pip-ca.pem", cert, "0644")
    root_put("/etc/pip.conf", pip_conf(cfg, cert is not None), "0644")


def build_image() -> None:
    """debootstrap once; the venv with dealsd's dependencies goes in the image."""
    stamp = IMAGE / STAMP
    if os.environ.get("DEALSD_TEST_REBUILD") != "1" and stamp.is_file() \
            and stamp.read_text().strip() == RECIPE:
        note(f"image {IMAGE}: cached")
        return
    mirror = host_mirror()
    if mirror is None:
        skip("no Debian mirror found in the host's apt sources (/etc/apt/sources.list{,.d/*})")
    tmp = IMAGE.with_name(IMAGE.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    note(f"image {IMAGE}: debootstrap {SUITE} from the host's apt mirror")
    r = run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(tmp), mirror], timeout=1500)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (r.stdout + r.stderr).strip().splitlines()[-2:]
        skip(f"debootstrap {SUITE} failed: {' | '.join(tail)[-300:]}")

    def put(path: str, data: str | bytes, mode: str = "0644") -> None:
        p = tmp / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(int(mode, 8))

    write_pip_setup(put)
    # The dependencies of the current checkout, into the venv (then dealsd
    # itself is removed again: each run installs the tree under test).
    src = tmp / "opt/dealsd/src"
    src.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(checkout_tar())) as tar:
        tar.extractall(src)
    note("image: venv and dependencies")
    # With the web extra's too (Datasette), for dealsd-web.service.
    script = (f"python3 -m venv {VENV} && {VENV}/bin/pip install -q '/opt/dealsd/src[web]' "
              f"&& {VENV}/bin/pip uninstall -q -y dealsd && rm -rf /opt/dealsd/src")
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    pe = [f"--setenv={k}={v}" for k, v in proxy_env().items()]
    r = run(["systemd-nspawn", "--quiet", "-D", str(tmp), "--register=no", "--keep-unit",
             "--pipe", "--resolv-conf=copy-host", *pe, "--", "/bin/sh", "-c", script],
            timeout=900, env=env)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        skip(f"cannot pip-install dealsd's dependencies in the container: {' | '.join(tail)[-400:]}")
    (tmp / STAMP).write_text(RECIPE + "\n")
    if IMAGE.exists():
        shutil.rmtree(IMAGE)
    tmp.rename(IMAGE)
    note("image: built")


# --- the checks --------------------------------------------------------------

class Checks:
    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0
        self.failures: list[str] = []

    def result(self, name: str, ok: bool, why: str = "", detail: str = "") -> bool:
        if ok:
            self.passed += 1
            say(f"PASS {name}" + (f" ({detail})" if detail else ""))
        else:
            self.failed += 1
            self.failures.append(name)
            say(f"FAIL {name}: {why}")
        return ok

    def skip(self, name: str, why: str) -> None:
        self.skipped += 1
        say(f"SKIP {name}: {why}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(port: int, upserter_interval: int = 5) -> str:
    # Like `dealsd demo`'s: the README's install with base_url at the simulator.
    return f"""\
# dealsd under systemd (systemd/test_under_systemd.py)
[keepa]
base_url = "http://127.0.0.1:{port}"

[database]
path = "{DATABASE}"

[upserter]
interval_s = {upserter_interval}

[backfiller]
idle_s = 0.5

[janitor]
interval_s = 60

[log]
level = "info"
"""


DROPIN = f"""\
# Test only: shorter timings, so that >= 3 watchdog periods and restarts fit
# in seconds. Everything else is the shipped unit.
[Service]
WatchdogSec={WATCHDOG_S}
RestartSec={RESTART_S}
"""


def sim_unit(port: int) -> str:
    return f"""\
[Unit]
Description=Keepa simulator for the dealsd test
[Service]
ExecStart={VENV}/bin/dealsd simulator --host 127.0.0.1 --port {port} --period 1 \
--refill-rate 20 --initial 100 --catalogue 3000 --seed 1
DynamicUser=yes
"""


class Harness:
    def __init__(self, c: Container, checks: Checks) -> None:
        self.c = c
        self.k = checks
        self.port = free_port()

    # helpers
    def show(self, *props: str, unit: str = UNIT) -> dict[str, str]:
        args = ["systemctl", "show", unit]
        for p in props:
            args += ["-p", p]
        r = self.c.exec(args)
        out: dict[str, str] = {}
        for line in r.stdout.splitlines():
            k, _, v = line.partition("=")
            out[k] = v
        return out

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.c.exec(["systemctl", *args], timeout=timeout)

    def now(self) -> str:
        """The container's clock, as journalctl --since takes it."""
        return "@" + self.c.sh("date +%s.%N").stdout.strip()

    def journal(self, since: str, *extra: str, unit: str = UNIT) -> str:
        r = self.c.exec(["journalctl", "-u", unit, "--since", since, "--no-pager", "-o", "cat",
                         *extra])
        return r.stdout

    def status(self) -> tuple[int, str]:
        r = self.c.exec(["dealsd", "status", "--config", CONF], timeout=30)
        return r.returncode, (r.stdout + r.stderr).strip()

    def wait_healthy(self, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        rc, out = 1, ""
        while time.monotonic() < deadline:
            rc, out = self.status()
            if rc == 0:
                return True, out
            time.sleep(2)
        return False, out

    def wait_port(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.3)
        return False

    def reset(self) -> None:
        self.ctl("reset-failed", UNIT)

    # install
    def install(self) -> bool:
        c = self.c
        note("installing the checkout as systemd/README.md says")
        write_pip_setup(c.put)
        r = c.sh("mkdir -p /opt/dealsd/src")
        r = c.exec(["tar", "-x", "-C", "/opt/dealsd/src"], input=checkout_tar())
        if r.returncode != 0:
            return self.k.result("install", False, f"copying the checkout: {r.stderr.strip()[-300:]}")
        t0 = time.monotonic()
        r = c.sh(f"test -x {VENV}/bin/python || python3 -m venv {VENV}; "
                 f"{VENV}/bin/pip install -q /opt/dealsd/src && "
                 f"ln -sf {VENV}/bin/dealsd /usr/local/bin/dealsd", timeout=600, env=proxy_env())
        if r.returncode != 0:
            return self.k.result("install", False,
                                 f"pip install /opt/dealsd/src: {(r.stdout + r.stderr).strip()[-400:]}")
        pip_s = time.monotonic() - t0
        c.sh("install -d -m 0755 /etc/dealsd")
        c.put(CONF, config_text(self.port), "0644")
        c.put(KEY, "test-key-not-secret\n", "0600")
        r = c.sh(f"dealsd check-config --config {CONF}")
        if r.returncode != 0:
            return self.k.result("install", False, f"check-config: {(r.stdout + r.stderr).strip()}")
        c.sh("install -m 0644 /opt/dealsd/src/systemd/dealsd.service /etc/systemd/system/")
        c.put(f"/etc/systemd/system/{UNIT}.service.d/test-timings.conf", DROPIN)
        c.put(f"/etc/systemd/system/{SIM_UNIT}.service", sim_unit(self.port))
        self.ctl("daemon-reload")
        r = self.ctl("start", SIM_UNIT)
        if r.returncode != 0 or not self.wait_port():
            return self.k.result("install", False, f"the simulator did not listen on 127.0.0.1:{self.port}: "
                                 f"{r.stderr.strip()} {self.journal('-5m', unit=SIM_UNIT)[-300:]}")
        return self.k.result("install", True, detail=f"pip install {pip_s:.0f}s, simulator on 127.0.0.1:{self.port}")

    # the checks, in the order they run
    def ready(self) -> bool:
        self.reset()
        t0 = time.monotonic()
        r = self.ctl("start", UNIT, timeout=120)
        dt = time.monotonic() - t0
        s = self.show("ActiveState", "SubState", "ExecMainStartTimestampMonotonic",
                      "ActiveEnterTimestampMonotonic")
        ok = r.returncode == 0 and s.get("ActiveState") == "active" and dt <= 20
        try:
            ready_s = (int(s["ActiveEnterTimestampMonotonic"]) - int(s["ExecMainStartTimestampMonotonic"])) / 1e6
            detail = f"READY {ready_s:.1f}s after exec"
        except (KeyError, ValueError):
            detail = f"start returned in {dt:.1f}s"
        return self.k.result("ready", ok, f"systemctl start rc={r.returncode} in {dt:.1f}s, "
                             f"{s.get('ActiveState')}/{s.get('SubState')}: {r.stderr.strip()[-200:]}",
                             detail)

    def status_line(self) -> None:
        text = ""
        for _ in range(10):
            text = self.show("StatusText").get("StatusText", "")
            if "workers=" in text:
                break
            time.sleep(1)
        self.k.result("status-line", "workers=" in text,
                      f"StatusText={text!r}", f"StatusText={text!r}")

    def watchdog_pings(self) -> None:
        s0 = self.show("WatchdogUSec", "MainPID", "NRestarts")
        stamps: list[int] = []
        gaps: list[float] = []
        last, last_change = None, time.monotonic()
        t_end = time.monotonic() + 3.5 * WATCHDOG_S
        while time.monotonic() < t_end:
            v = self.show("WatchdogTimestampMonotonic").get("WatchdogTimestampMonotonic", "0")
            if v != last:
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last_change)
                    stamps.append(int(v))
                last, last_change = v, now
            time.sleep(0.4)
        s1 = self.show("MainPID", "NRestarts", "ActiveState")
        wd = s0.get("WatchdogUSec", "")
        problems = []
        if wd not in (f"{WATCHDOG_S}s", str(WATCHDOG_S * 10**6)):
            problems.append(f"WatchdogUSec={wd}, not the drop-in's {WATCHDOG_S}s")
        if len(stamps) < 3:
            problems.append(f"only {len(stamps)} pings seen in {3.5 * WATCHDOG_S:.0f}s")
        if s1.get("MainPID") != s0.get("MainPID") or s1.get("NRestarts") != s0.get("NRestarts"):
            problems.append(f"restarted: MainPID {s0.get('MainPID')}->{s1.get('MainPID')}, "
                            f"NRestarts {s0.get('NRestarts')}->{s1.get('NRestarts')}")
        self.k.result("watchdog-pings", not problems, "; ".join(problems),
                      f"{len(stamps)} pings over {3.5 * WATCHDOG_S / WATCHDOG_S:.1f} periods of "
                      f"{WATCHDOG_S}s, longest gap {max(gaps, default=0):.1f}s")

    def healthy(self) -> None:
        ok, out = self.wait_healthy(60)
        self.k.result("status-healthy", ok, f"`dealsd status` not healthy within 60s: "
                      f"{out.splitlines()[0] if out else ''}", out.splitlines()[0] if out else "")

    def reload_live(self) -> None:
        pid = self.show("MainPID")["MainPID"]
        since = self.now()
        self.c.put(CONF, config_text(self.port, upserter_interval=7), "0644")
        r = self.ctl("reload", UNIT, timeout=60)
        seen = ""
        for _ in range(20):
            seen = self.journal(since)
            if "interval_s" in seen and "reloaded" in seen:
                break
            time.sleep(0.5)
        s = self.show("MainPID", "ActiveState")
        problems = []
        if r.returncode != 0:
            why = [ln.strip() for ln in seen.splitlines()
                   if ln.strip() and not ln.startswith("event=") and "Reload" not in ln]
            problems.append(f"systemctl reload rc={r.returncode}; journal: "
                            f"{' | '.join(why[-2:])[-300:] or '(nothing)'}")
        if "interval_s" not in seen:
            problems.append("no config_changed for upserter.interval_s in the journal")
        if s.get("MainPID") != pid or s.get("ActiveState") != "active":
            problems.append(f"MainPID {pid}->{s.get('MainPID')}, {s.get('ActiveState')}")
        line = next((ln for ln in seen.splitlines() if "interval_s" in ln), "")
        self.k.result("reload-live-key", not problems, "; ".join(problems), line.strip()[:160])

    def reload_broken(self) -> None:
        pid = self.show("MainPID")["MainPID"]
        since = self.now()
        self.c.put(CONF, config_text(self.port, 7) + "\n[upserter\nbroken = \n", "0644")
        r = self.ctl("reload", UNIT, timeout=60)
        time.sleep(1)
        s = self.show("MainPID", "ActiveState", "ReloadResult")
        j = self.journal(since)
        self.c.put(CONF, config_text(self.port, 7), "0644")  # restore
        problems = []
        if r.returncode == 0:
            problems.append(f"systemctl reload exited 0 with a broken config "
                            f"(ReloadResult={s.get('ReloadResult')}"
                            + ("; dealsd logged reload_rejected" if "reload_rejected" in j else "") + ")")
        if s.get("MainPID") != pid or s.get("ActiveState") != "active":
            problems.append(f"the running daemon did not survive: MainPID {pid}->{s.get('MainPID')}, "
                            f"{s.get('ActiveState')}")
        self.k.result("reload-broken-config-fails", not problems, "; ".join(problems),
                      f"systemctl reload rc={r.returncode}, daemon kept running (pid {pid})")

    def sigstop(self) -> None:
        s0 = self.show("MainPID", "NRestarts")
        pid = s0["MainPID"]
        since = self.now()
        self.c.sh(f"kill -STOP {int(pid)}")
        t0 = time.monotonic()
        s: dict[str, str] = {}
        deadline = t0 + WATCHDOG_S + RESTART_S + 60
        while time.monotonic() < deadline:
            s = self.show("MainPID", "NRestarts", "ActiveState", "SubState")
            if s.get("MainPID") not in (pid, "0") and s.get("ActiveState") == "active" \
                    and s.get("SubState") == "running":
                break
            time.sleep(0.5)
        dt = time.monotonic() - t0
        j = self.journal(since)
        wd_line = next((ln for ln in j.splitlines() if "atchdog timeout" in ln), "")
        problems = []
        if not wd_line:
            problems.append("no 'Watchdog timeout' in the journal")
        if s.get("MainPID") in (pid, "0") or s.get("ActiveState") != "active":
            problems.append(f"not restarted within {dt:.0f}s: MainPID {s.get('MainPID')}, "
                            f"{s.get('ActiveState')}/{s.get('SubState')}")
        try:
            if int(s.get("NRestarts", "0")) != int(s0.get("NRestarts", "0")) + 1:
                problems.append(f"NRestarts {s0.get('NRestarts')}->{s.get('NRestarts')}")
        except ValueError:
            pass
        self.k.result("sigstop-watchdog-restart", not problems, "; ".join(problems),
                      f"killed by the watchdog and running again as pid {s.get('MainPID')} "
                      f"{dt:.1f}s after SIGSTOP (WatchdogSec={WATCHDOG_S}, RestartSec={RESTART_S})")

    def security(self) -> None:
        r = self.c.exec(["systemd-analyze", "security", "--no-pager", f"{UNIT}.service"], timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        if not m:
            self.k.result("security-exposure", False, f"no exposure figure: {(r.stdout + r.stderr)[-300:]}")
            return
        e = float(m.group(1))
        self.k.result("security-exposure", e <= MAX_EXPOSURE, f"exposure {e} > {MAX_EXPOSURE}",
                      f"exposure {e} <= {MAX_EXPOSURE}, running unit")

    def ip_firewall(self) -> None:
        """IPAddressDeny= is enforced here (BPF on cgroup v2) and attached to dealsd."""
        probe = ("import socket,sys\ntry:\n socket.create_connection(('127.0.0.1',%d),timeout=3)"
                 "\nexcept OSError as e:\n print('refused',e); sys.exit(1)\nprint('connected')") % self.port
        base = ["systemd-run", "--wait", "--pipe", "--quiet", "-p", "DynamicUser=yes"]
        allowed = self.c.exec([*base, "python3", "-c", probe], timeout=30)
        denied = self.c.exec([*base, "-p", "IPAddressDeny=127.0.0.0/8", "python3", "-c", probe], timeout=30)
        cg = self.show("ControlGroup").get("ControlGroup", "")
        bt = self.c.exec(["bpftool", "cgroup", "show", f"/sys/fs/cgroup{cg}"], timeout=30)
        problems = []
        if allowed.returncode != 0:
            problems.append(f"probe without IPAddressDeny failed: {allowed.stdout.strip()}")
        if denied.returncode == 0:
            problems.append("a unit with IPAddressDeny=127.0.0.0/8 still connected: not enforced")
        attached = [ln.split()[1] for ln in bt.stdout.splitlines()
                    if len(ln.split()) > 1 and ln.split()[1].startswith("cgroup_inet_")]
        if not {"cgroup_inet_egress", "cgroup_inet_ingress"} <= set(attached):
            problems.append(f"no ingress/egress BPF filter on {cg}: {bt.stdout.strip() or bt.stderr.strip()}")
        if not self.c.unified:
            self.k.skip("ip-address-deny", "container booted without cgroup v2: IPAddressDeny= cannot be enforced")
            return
        self.k.result("ip-address-deny", not problems, "; ".join(problems),
                      f"enforced (a denied probe is refused), dealsd's cgroup has {', '.join(sorted(set(attached)))}")

    def limits(self) -> None:
        cg = self.show("ControlGroup").get("ControlGroup", "")
        r = self.c.sh(f"cat /sys/fs/cgroup{cg}/memory.max /sys/fs/cgroup{cg}/pids.max 2>/dev/null")
        ctrl = self.c.sh("cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null").stdout.split()
        if "memory" not in ctrl or "pids" not in ctrl:
            self.k.skip("memory-tasks-limits",
                        f"the container's cgroup v2 has controllers [{' '.join(ctrl)}]: the host binds "
                        f"memory and pids to cgroup v1, so MemoryMax=/TasksMax= cannot be applied here")
            return
        vals = r.stdout.split()
        self.k.result("memory-tasks-limits", vals == ["1073741824", "64"],
                      f"memory.max/pids.max = {vals}", "memory.max 1G, pids.max 64")

    def outage(self) -> None:
        ok, out = self.wait_healthy(60)
        if not ok:
            self.k.result("outage-setup", False, f"not healthy before the outage: {out[:200]}")
            return
        s0 = self.show("MainPID", "NRestarts", "InvocationID")
        since = self.now()
        note(f"Keepa outage: stopping the simulator for {OUTAGE_S}s")
        self.ctl("stop", SIM_UNIT)
        t0 = time.monotonic()
        last, last_t, max_gap = None, t0, 0.0
        unhealthy_at: float | None = None
        while time.monotonic() - t0 < OUTAGE_S:
            v = self.show("WatchdogTimestampMonotonic").get("WatchdogTimestampMonotonic")
            now = time.monotonic()
            if v != last:
                last, last_t = v, now
            max_gap = max(max_gap, now - last_t)
            if unhealthy_at is None and int(now - t0) % 10 == 0:
                rc, _ = self.status()
                if rc != 0:
                    unhealthy_at = now - t0
            time.sleep(1)
        rc, out = self.status()
        s1 = self.show("MainPID", "NRestarts", "InvocationID", "ActiveState", "StatusText")
        j = self.journal(since)
        restarts = [ln for ln in j.splitlines() if "atchdog timeout" in ln or "Scheduled restart" in ln]
        same = s1.get("MainPID") == s0.get("MainPID") and s1.get("NRestarts") == s0.get("NRestarts")
        self.k.result("outage-no-restart", same and not restarts,
                      f"restarted during a {OUTAGE_S}s Keepa outage: MainPID {s0.get('MainPID')}->"
                      f"{s1.get('MainPID')}, NRestarts {s0.get('NRestarts')}->{s1.get('NRestarts')}"
                      + (f"; journal: {restarts[0].strip()}" if restarts else ""),
                      f"same pid {s1.get('MainPID')} through {OUTAGE_S}s")
        self.k.result("outage-keeps-pinging", max_gap < WATCHDOG_S,
                      f"no watchdog ping for {max_gap:.0f}s (WatchdogSec={WATCHDOG_S})",
                      f"longest gap between pings {max_gap:.1f}s")
        first = out.splitlines()[0] if out else ""
        self.k.result("outage-status-unhealthy", rc != 0,
                      f"`dealsd status` exit 0 after {OUTAGE_S}s without Keepa: {first!r}",
                      f"exit {rc} after {OUTAGE_S}s: {first!r}")
        st = s1.get("StatusText", "")
        self.k.result("outage-statustext-unhealthy", "UNHEALTHY" in st,
                      f"StatusText after {OUTAGE_S}s without Keepa: {st!r}", repr(st[:160]))
        self.ctl("start", SIM_UNIT)
        self.wait_port()
        ok, out = self.wait_healthy(90)
        self.k.result("outage-recovers", ok, f"not healthy within 90s after Keepa came back: {out[:200]!r}",
                      "healthy again after the simulator came back")

    def stop_clean(self) -> None:
        self.show("MainPID")
        t0 = time.monotonic()
        r = self.ctl("stop", UNIT, timeout=90)
        dt = time.monotonic() - t0
        s = self.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        ok = r.returncode == 0 and s.get("ActiveState") == "inactive" and s.get("Result") == "success" \
            and s.get("ExecMainStatus") == "0" and dt < 60
        self.k.result("stop-clean", ok, f"rc={r.returncode} in {dt:.1f}s, {s}",
                      f"inactive, Result=success, exit 0, in {dt:.1f}s")

    def web(self) -> None:
        """dealsd-web.service installed as systemd/README.md says, beside the stopped
        daemon: serves a deal's page with its chart on loopback only, writes nothing."""
        c, problems = self.c, []
        before = c.sh(f"sha256sum {DATABASE}").stdout.split()[:1]
        r = c.sh(f"{VENV}/bin/pip install -q '/opt/dealsd/src[web]' && install -m 0644 "
                 f"/opt/dealsd/src/systemd/{WEB_UNIT}.service /etc/systemd/system/",
                 timeout=600, env=proxy_env())
        if r.returncode != 0:
            self.k.result("web-unit", False, f"install: {(r.stdout + r.stderr).strip()[-300:]}")
            return
        self.ctl("daemon-reload")
        r = self.ctl("start", WEB_UNIT, timeout=60)
        # A backfilled deal's row page, fetched the way the SSH tunnel's far end does.
        probe = f"""\
import json, sys, time, urllib.request
base = "http://127.0.0.1:{WEB_PORT}/dealsd"
for _ in range(60):
    try:
        rows = json.load(urllib.request.urlopen(
            base + "/deals.json?_shape=array&_size=1&backfilled_at__notblank=1", timeout=5))
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("no answer on 127.0.0.1:{WEB_PORT}")
if not rows:
    sys.exit("no backfilled deal listed")
d = rows[0]
page = urllib.request.urlopen(f"{{base}}/deals/{{d['domain_id']}},{{d['asin']}}", timeout=10).read()
print(d["asin"], "chart" if b"Price history" in page and b"<svg" in page else "no chart")
"""
        got = c.exec(["python3", "-c", probe], timeout=60)
        answer = got.stdout.strip()
        if got.returncode != 0 or not answer.endswith(" chart"):
            problems.append(f"deal page: {answer or got.stderr.strip()[-200:]}")
        # Listening sockets on the unit's port, from /proc (minbase has no ss).
        port_hex = f"{WEB_PORT:04X}"
        listen = c.sh(f"cat /proc/net/tcp /proc/net/tcp6 | awk '$4 == \"0A\" "
                      f"&& $2 ~ /:{port_hex}$/ {{print $2}}'").stdout.split()
        if not listen or any(a != f"0100007F:{port_hex}" for a in listen):
            problems.append(f"listening on {listen or 'nothing'}, not 127.0.0.1:{WEB_PORT} alone")
        sec = c.exec(["systemd-analyze", "security", "--no-pager", f"{WEB_UNIT}.service"], timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout + sec.stderr)
        exposure = float(m.group(1)) if m else None
        if exposure is None or exposure > MAX_EXPOSURE:
            problems.append(f"exposure {exposure} (> {MAX_EXPOSURE} or none)")
        stop = self.ctl("stop", WEB_UNIT, timeout=60)
        s = self.show("Result", "ExecMainStatus", unit=WEB_UNIT)
        if stop.returncode != 0 or s.get("Result") != "success":
            problems.append(f"stop: rc={stop.returncode}, {s}")
        after = c.sh(f"sha256sum {DATABASE}").stdout.split()[:1]
        if not before or before != after:
            problems.append(f"the database changed while served: {before} -> {after}")
        self.k.result("web-unit", r.returncode == 0 and not problems,
                      f"start rc={r.returncode}; " + "; ".join(problems),
                      f"deal {answer.split()[0] if answer else '?'}'s page with its chart on "
                      f"127.0.0.1:{WEB_PORT} only, exposure {exposure}, database unchanged")

    def _failed_start(self) -> tuple[subprocess.CompletedProcess[str], dict[str, str], dict[str, str]]:
        """Start (expecting a failure), then wait past RestartSec: was it restarted?"""
        self.reset()
        r = self.ctl("start", UNIT, timeout=120)
        a = self.show("NRestarts", "InvocationID", "ExecMainStatus", "Result", "ActiveState")
        time.sleep(RESTART_S * 3 + 2)
        b = self.show("NRestarts", "InvocationID", "ExecMainStatus", "Result", "ActiveState", "SubState")
        return r, a, b

    def bad_config(self) -> str:
        since = self.now()
        self.c.put(CONF, config_text(self.port) + "\n[tokens]\nno_such_key = 1\n", "0644")
        r, a, b = self._failed_start()
        problems = []
        if r.returncode == 0:
            problems.append("systemctl start succeeded")
        if b.get("ExecMainStatus") != "78":
            problems.append(f"exit status {b.get('ExecMainStatus')}, not 78")
        if b.get("NRestarts") != a.get("NRestarts") or b.get("InvocationID") != a.get("InvocationID") \
                or b.get("ActiveState") != "failed":
            problems.append(f"restarted: NRestarts {a.get('NRestarts')}->{b.get('NRestarts')}, "
                            f"{b.get('ActiveState')}/{b.get('SubState')}")
        self.k.result("bad-config-78-no-restart", not problems, "; ".join(problems),
                      f"exit 78, {b.get('ActiveState')}, not restarted in {RESTART_S * 3 + 2}s")
        return since

    def journal_config_error(self, since: str) -> None:
        warn = self.journal(since, "-p", "warning")
        line = next((ln for ln in warn.splitlines() if "config error" in ln), "")
        if line:
            self.k.result("journal-config-error-priority", True, detail=line.strip()[:160])
            return
        r = self.c.exec(["journalctl", "-u", UNIT, "--since", since, "--no-pager", "-o", "json"])
        prio = "?"
        for ln in r.stdout.splitlines():
            try:
                e = json.loads(ln)
            except ValueError:
                continue
            if "config error" in str(e.get("MESSAGE", "")):
                prio = str(e.get("PRIORITY"))
                break
        self.k.result("journal-config-error-priority", False,
                      "`journalctl -u dealsd -p warning` does not show the config error "
                      f"(it is logged at priority {prio}; warning is <= 4)")

    def missing_credential(self) -> None:
        self.c.put(CONF, config_text(self.port), "0644")
        self.c.sh(f"mv {KEY} {KEY}.away")
        r, a, b = self._failed_start()
        self.c.sh(f"mv {KEY}.away {KEY}")
        problems = []
        if r.returncode == 0:
            problems.append("systemctl start succeeded without the key file")
        if b.get("NRestarts") != a.get("NRestarts") or b.get("InvocationID") != a.get("InvocationID") \
                or b.get("ActiveState") != "failed":
            problems.append(f"restart loop: NRestarts {a.get('NRestarts')}->{b.get('NRestarts')} in "
                            f"{RESTART_S * 3 + 2}s, {b.get('ActiveState')}/{b.get('SubState')} "
                            f"(exit status {b.get('ExecMainStatus')}, Result={b.get('Result')})")
        self.k.result("missing-credential-no-restart", not problems, "; ".join(problems),
                      f"failed with exit status {b.get('ExecMainStatus')} (Result={b.get('Result')}), "
                      f"not restarted")
        # And it starts again once the key is back.
        self.reset()
        r = self.ctl("start", UNIT, timeout=120)
        self.k.result("starts-after-fix", r.returncode == 0, f"rc={r.returncode}: {r.stderr.strip()[-200:]}",
                      "config and key restored: starts")
        self.ctl("stop", UNIT, timeout=90)

    def save_logs(self) -> None:
        r = self.c.exec(["journalctl", "-b", "--no-pager", "-o", "short-monotonic"], timeout=60)
        try:
            with open(LOG_PATH, "a") as f:
                f.write("\n===== container journal =====\n" + r.stdout)
        except OSError:
            pass


def main() -> int:
    if sys.platform != "linux":
        skip("not Linux")
    if os.geteuid() != 0:
        skip("needs root (debootstrap and systemd-nspawn)")
    ensure_tools()
    build_image()
    LOG_PATH.write_text(f"dealsd test under systemd, {time.ctime()}\n===== nspawn console =====\n")
    c = Container(IMAGE, LOG_PATH, unified=True)
    why = c.boot()
    if why is not None:
        note(f"boot with cgroup v2 failed ({why}); trying the host's cgroup layout")
        c.shutdown()
        c = Container(IMAGE, LOG_PATH, unified=False)
        why = c.boot()
        if why is not None:
            c.shutdown()
            skip(f"cannot boot a systemd container here: {why}")
    version = c.exec(["systemctl", "--version"]).stdout.splitlines()[:1]
    cgroup = c.sh("stat -fc %T /sys/fs/cgroup").stdout.strip()
    note(f"booted: {version[0] if version else '?'}, /sys/fs/cgroup is {cgroup}")
    k = Checks()
    h = Harness(c, k)
    stop = {"sig": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["sig"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if h.install():
            if h.ready():
                h.status_line()
                h.watchdog_pings()
                h.healthy()
                h.reload_live()
                h.reload_broken()
                h.sigstop()
                h.security()
                h.ip_firewall()
                h.limits()
                h.outage()
                h.stop_clean()
                h.web()
            else:
                h.ctl("stop", UNIT)
            since = h.bad_config()
            h.journal_config_error(since)
            h.missing_credential()
    except KeyboardInterrupt:
        say(f"FAIL interrupted: signal {stop['sig'] or 'SIGINT'}")
        k.failed += 1
    finally:
        h.save_logs()
        if os.environ.get("DEALSD_TEST_KEEP") == "1":
            note(f"container left running: nsenter -t {c.leader} -a bash")
        else:
            c.shutdown()
    total = time.monotonic() - T_START
    say(f"summary: {k.passed} passed, {k.failed} failed, {k.skipped} skipped")
    say(f"took {total:.0f}s; container journal in {LOG_PATH}"
        + (f"; failed: {' '.join(k.failures)}" if k.failures else ""))
    return 1 if k.failed else 0


if __name__ == "__main__":
    sys.exit(main())
