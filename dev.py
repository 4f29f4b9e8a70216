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
without python3-venv), the environment is made without pip and pip is
bootstrapped from its wheel on PyPI.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DEALSD_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _run(*args: str | Path, check: bool = True) -> int:
    return subprocess.run([str(a) for a in args], check=check).returncode


def _bootstrap_pip() -> None:
    """Install pip into a venv made --without-pip, from its wheel on PyPI."""
    with urllib.request.urlopen("https://pypi.org/pypi/pip/json", timeout=60) as resp:
        meta = json.load(resp)
    wheel = next(u for u in meta["urls"] if u["filename"].endswith(".whl"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / wheel["filename"]
        with urllib.request.urlopen(wheel["url"], timeout=120) as resp:
            data = resp.read()
        if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
            sys.exit("dev.py: the pip wheel downloaded does not match PyPI's checksum")
        path.write_bytes(data)
        # A pip wheel runs from the zip itself: use it to install itself.
        _run(PY, f"{path}/pip", "install", "--quiet", str(path))


def ensure_venv(extras: str) -> None:
    """Create .venv if needed and install dealsd (with ``extras``) when it changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run under any python3
        sys.exit(f"dev.py: dealsd needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                           capture_output=True)
        except subprocess.CalledProcessError:
            subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(VENV)],
                           check=True)
            _bootstrap_pip()
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
