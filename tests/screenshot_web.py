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
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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


class Shot(NamedTuple):
    png: Path
    dom: str  # the page as the browser built it (``--dump-dom``)


def screenshot(out: Path) -> Shot:
    """Screenshot the sample deal's page into ``out``, and dump its DOM."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="dealsd-shot-") as tmp:
        db = Path(tmp) / "deals.db"
        sample_database(db, now=time.time())
        with served(db) as url:
            page = f"{url}/dealsd/deals/1,{ASIN}"
            base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}"]

            def browse(*args: str) -> str:
                done = subprocess.run(
                    [*base, *args, page], check=True, capture_output=True, text=True, timeout=90
                )
                return done.stdout

            browse(f"--screenshot={out.absolute()}")
            dom = browse("--dump-dom")
    return Shot(out, dom)


def colours(png: Path) -> Counter[bytes]:
    """How many pixels of each RGB colour an 8-bit RGB(A) PNG holds.

    A small decoder (inflate, then undo each row's filter) so that the test
    needs no imaging library; Chromium writes exactly this kind of PNG.
    """
    data = png.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{png} is not a PNG")
    pos, idat, width, height, bpp = 8, bytearray(), 0, 0, 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        pos += 12 + size
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (2, 6) or interlace:
                raise ValueError(f"{png}: only 8-bit RGB(A), not interlaced")
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride = zlib.decompress(idat), width * bpp
    prev, counts = bytearray(stride), Counter[bytes]()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:  # Paeth
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        counts.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp))
        prev = line
    return counts


if __name__ == "__main__":
    print(screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "dealsd-web.png")).png)
