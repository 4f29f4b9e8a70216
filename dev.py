#!/usr/bin/env python3
"""Set-up and entry point for a fresh machine: needs nothing but Python 3.11+.

    python3 dev.py demo      # dealsd demo against the built-in Keepa simulator
    python3 dev.py test      # the test suite
    python3 dev.py check     # ruff, mypy, and no path of the build machine in tracked files
    python3 dev.py bench     # every benchmark, one table
    python3 dev.py dealsd …  # any dealsd command inside the environment

Each creates (or reuses) the virtual environment `.venv` beside this file and
installs dealsd into it: stock Debian and Ubuntu refuse a system-wide
`pip install` (PEP 668). Where the `venv` module cannot provide pip (Debian
and Ubuntu ship ensurepip apart, in python3.X-venv), a pip already on the
system installs pip into the environment; with neither, dev.py names the
package to install and stops.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DEALSD_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _run(*args: str | Path, check: bool = True) -> int:
    return subprocess.run([str(a) for a in args], check=check).returncode


def _has_ensurepip() -> bool:
    # The test venv itself makes before it fails with "ensurepip is not available".
    return Path(sysconfig.get_path("stdlib"), "ensurepip", "__main__.py").exists()


def _pip_from_system() -> bool:
    """Install pip into the new venv with a pip this Python already has, if any.

    ``pip --python`` (pip 22.3+) runs that pip against another interpreter: it
    installs from the package index pip is configured for, as every later
    install does, so nothing here names one.
    """
    probe = [sys.executable, "-m", "pip", "--python", str(PY), "--version"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return False  # no pip, or one too old for --python
    print("dev.py: no ensurepip here; installing pip into the environment with the system's pip",
          flush=True)
    _run(sys.executable, "-m", "pip", "--python", PY, "install", "--quiet",
         "--disable-pip-version-check", "pip")
    return True


def _create_venv() -> None:
    print(f"dev.py: creating {VENV}", flush=True)
    try:
        if _has_ensurepip():
            _run(sys.executable, "-m", "venv", VENV)
            return
        _run(sys.executable, "-m", "venv", "--clear", "--without-pip", VENV)
        if _pip_from_system():
            return
    except BaseException:
        shutil.rmtree(VENV, ignore_errors=True)  # half made: the next run starts again
        raise
    shutil.rmtree(VENV, ignore_errors=True)
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    sys.exit(f"dev.py: {sys.executable} has neither ensurepip nor pip to set up {VENV}: "
             f"install the python{minor}-venv package (apt install python{minor}-venv) "
             "and run dev.py again")


def ensure_venv(extras: str) -> None:
    """Create .venv if needed and install dealsd (with ``extras``) when it changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run under any python3
        sys.exit(f"dev.py: dealsd needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PY.exists():
        _create_venv()
    # Reinstall only when pyproject.toml changed or these extras are not in yet
    # (an install with [dev] serves the plain one too).
    stamp = VENV / ".dealsd-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    have = stamp.read_text().split() if stamp.exists() else []
    if have[:1] == [digest] and (extras == "" or extras in have[1:]):
        return
    print(f"dev.py: installing dealsd{extras} into {VENV}", flush=True)
    _run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-e", f"{ROOT}{extras}")
    kept = have[1:] if have[:1] == [digest] else []
    stamp.write_text(" ".join([digest, *sorted({*kept, extras} - {""})]))


# -- the path check -------------------------------------------------------------
#
# A fresh clone must work anywhere, so no tracked file may name where it was
# built, or lean on a file beside the checkout. What counts:
# - an absolute path under a home or workspace root (/home, /root, /work,
#   /Users, /mnt, /media followed by a name): dealsd never uses one at run
#   time (its unit even hides /home), so such a path can only be a machine's;
# - under /opt, anything but the product's own /opt/dealsd (a build machine
#   keeps wheels and indexes there);
# - the checkout's own absolute path, wherever it is (a worktree in /tmp);
# - a relative path that climbs with .. first and, from the file's folder,
#   leaves the repository or names nothing in it (a folder beside the checkout).
# Allowed: every other absolute path. The system paths dealsd really uses
# (/etc/dealsd, /var/lib/dealsd, /usr/bin/env, /dev/null, /proc/self) and
# made-up paths in tests (/tmp/x.db, /srv/dealsd.toml) live there, and so do
# the API's endpoints (/deal, /product). A path glued to a word or a host
# (https://host/home/x, $here/../.venv) is not a path of its own. Skipped:
# binary files, and the Keepa samples (recorded answers, quoted byte for byte).
PATH_CHECK_SKIP = ("dealsd/samples/*.json",)
_EDGE = r"(?<![\w.~$}-])"  # what may not come right before a path of its own (file:/// may)
_REST = r"[\w.~-]+(?:/[\w.~-]+)*"  # the rest of the path, for the report
_MACHINE = re.compile(_EDGE + r"/(?:home|root|work|Users|mnt|media)/" + _REST)
_OPT = re.compile(_EDGE + r"/opt/(?!dealsd(?![\w.-]))" + _REST)
_CLIMB = re.compile(r"(?<![\w.~$}/-])(?:\.\./)+[\w.-]*(?:/[\w.-]+)*")


def _tracked_text(root: Path) -> list[tuple[str, str]]:
    """(path, text) of every tracked text file the check reads."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True,
                           capture_output=True).stdout.decode().split("\0")
    files: list[tuple[str, str]] = []
    for name in filter(None, names):
        if any(fnmatch.fnmatch(name, pattern) for pattern in PATH_CHECK_SKIP):
            continue
        path = root / name
        if not path.is_file():
            continue  # deleted, not yet committed
        data = path.read_bytes()
        try:
            if b"\0" not in data:
                files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            pass  # binary
    return files


def path_findings(root: Path) -> list[str]:
    """Each ``file:line: what: path`` naming this machine or a place outside ``root``."""
    root = root.resolve()
    own = re.compile(re.escape(str(root)) + r"(?![\w.-])")
    found: list[str] = []
    for name, text in _tracked_text(root):
        folder = (root / name).parent
        for number, line in enumerate(text.splitlines(), 1):
            hits = [("absolute path of a machine", m.group()) for m in _MACHINE.finditer(line)]
            hits += [("absolute path outside /opt/dealsd", m.group()) for m in _OPT.finditer(line)]
            hits += [("the checkout's own path", m.group()) for m in own.finditer(line)]
            for m in _CLIMB.finditer(line):
                target = (folder / m.group()).resolve()
                if not target.is_relative_to(root):
                    hits.append(("path outside the repository", m.group()))
                elif not target.exists():
                    hits.append(("path naming nothing in the repository", m.group()))
            found += [f"{name}:{number}: {what}: {path}" for what, path in hits]
    return found


def check_paths(root: Path = ROOT) -> int:
    found = path_findings(root)
    for line in found:
        print(line)
    if found:
        print(f"dev.py: {len(found)} path(s) of the build machine or outside the repository "
              "in tracked files", file=sys.stderr)
    return 1 if found else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    os.chdir(ROOT)
    if cmd == "demo":
        ensure_venv("")
        return _run(BIN / "dealsd", "demo", *rest, check=False)
    if cmd == "dealsd":
        ensure_venv("")
        return _run(BIN / "dealsd", *rest, check=False)
    ensure_venv("[dev]")
    if cmd == "test":
        return _run(PY, "-m", "pytest", *rest, check=False)
    if cmd == "check":
        paths = check_paths()
        ruff = _run(PY, "-m", "ruff", "check", "dealsd", "tests", "bench", "dev.py", check=False)
        mypy = _run(PY, "-m", "mypy", check=False)
        return paths or ruff or mypy
    if cmd == "bench":
        return _run(PY, "-m", "bench", *rest, check=False)
    print(f"dev.py: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
