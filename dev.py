#!/usr/bin/env python3
"""Set-up and entry point for a fresh machine: needs nothing but Python 3.11+.

    python3 dev.py demo      # dealsd demo against the built-in Keepa simulator
    python3 dev.py test      # the test suite
    python3 dev.py check     # ruff and mypy
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

import hashlib
import os
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
        ruff = _run(PY, "-m", "ruff", "check", "dealsd", "tests", "bench", "dev.py", check=False)
        mypy = _run(PY, "-m", "mypy", check=False)
        return ruff or mypy
    if cmd == "bench":
        return _run(PY, "-m", "bench", *rest, check=False)
    print(f"dev.py: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
