"""A real browser's view of a deal's page: ``python tests/screenshot_web.py [OUT.png]``.

Builds a database from the real samples (tests/helpers.py), serves it with
``python -m dealsd web`` on a free loopback port, and has headless Chromium
(Debian's ``chromium`` package) screenshot the row page of B0D8W1YVBX with
its price chart. The PNG is not committed; look at it. tests/test_web.py
runs this once when chromium is installed.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from helpers import sample_database

ASIN = "B0D8W1YVBX"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1600",
)  # fmt: skip


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@contextlib.contextmanager
def served(db: Path) -> Iterator[str]:
    """``python -m dealsd web`` on ``db`` at a free loopback port; yields its root URL."""
    port = _free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "dealsd", "web", "--database", str(db), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/", 30)
        yield url
    finally:
        web.terminate()
        web.wait(10)


def screenshot(out: Path) -> Path:
    """Screenshot the sample deal's page into ``out``; returns it."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="dealsd-shot-") as tmp:
        db = Path(tmp) / "deals.db"
        sample_database(db, now=time.time())
        with served(db) as url:
            subprocess.run(
                [browser, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}",
                 f"--screenshot={out.absolute()}", f"{url}/dealsd/deals/1,{ASIN}"],
                check=True, capture_output=True, timeout=90,
            )  # fmt: skip
    return out


if __name__ == "__main__":
    path = screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "dealsd-web.png"))
    print(path)
