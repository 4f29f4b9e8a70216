"""Plain helpers shared by the tests (fixtures live in conftest.py).

No test module imports another: what two tests share lives here. Sections:
the real samples; the simulator's and the daemon's settings; waiting and
reading the database; the daemon in this event loop; the daemon as a real
process and the CLI; the secret and the files on disk. bench/ does not use
these: it must run without the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from dealsd import estimate, mapping
from dealsd.clock import SystemClock, iso_utc
from dealsd.config import Config, ProfitConfig, UpserterConfig
from dealsd.daemon import run_daemon
from dealsd.keepa import KeepaClient, payloads
from dealsd.notify import Notifier
from dealsd.selections import Selection
from dealsd.simulator import SimOptions, Simulator
from dealsd.store import Store, backfill, feed, schema
from dealsd.tokens import TokenScheduler
from dealsd.workers.backfiller import PAYLOAD_ZLIB_LEVEL
from dealsd.workers.health import Health

HERE = Path(__file__).resolve().parent

# -- the real Keepa /product responses, shipped as package data ---------------

SAMPLE_ASINS = ("B0D8W1YVBX", "B0F7XPYCSJ")


def sample_bytes(asin: str) -> bytes:
    """The raw body of a real /product sample shipped in ``dealsd/samples/``."""
    return (resources.files("dealsd") / "samples" / f"product_{asin}.json").read_bytes()


def _current(values: list[int], index: int) -> int | None:
    return values[index] if index < len(values) and values[index] >= 0 else None


def sample_database(db: Path, *, now: float) -> None:
    """A migrated database holding the real samples as backfilled deals with history.

    Written through the daemon's own mapping and queries (as the upserter and
    the backfiller write), the payload stored as the backfiller stores it.
    """
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        schema.apply_migrations(conn)
        stamp = iso_utc(now)
        for asin in SAMPLE_ASINS:
            raw = msgspec.json.encode(json.loads(sample_bytes(asin))["products"][0])
            product = msgspec.json.decode(raw, type=payloads.Product)
            current = product.stats.current if product.stats is not None else []
            row = {"asin": asin, "domain_id": 1, "title": product.title,
                   "root_category": mapping.root_category(product.root_category),
                   "current_new_cents": _current(current, payloads.NEW),
                   "current_used_cents": _current(current, payloads.USED),
                   "current_sales_rank": _current(current, payloads.SALES),
                   "keepa_last_update": mapping.keepa_time_iso(product.last_update),
                   "last_seen_at": stamp}  # fmt: skip
            columns = mapping.product_columns(product)
            conn.execute("BEGIN")
            feed.upsert_deals(conn, [row], checkpoints={}, now=stamp)
            # As the backfiller does: the estimate from the stored row and the
            # product's columns. Bought new, priced at the 90-day new average:
            # the samples have no used history at all.
            merged = {**(backfill.deal_by_asin(conn, asin) or {}), **columns}
            columns.update(estimate.estimate(
                merged, buy_cost_cents=estimate.buy_cost_cents(merged, payloads.NEW),
                price_type=payloads.NEW, profit=ProfitConfig(reference="new")))  # fmt: skip
            backfill.store_product(
                conn, asin=asin, fetched_at=stamp,
                keepa_last_update=mapping.keepa_time_iso(product.last_update),
                tokens_spent=1, payload_zlib=zlib.compress(raw, PAYLOAD_ZLIB_LEVEL),
                columns={**columns, "backfilled_at": stamp},
            )  # fmt: skip
            conn.execute("COMMIT")
    finally:
        conn.close()


# -- settings: the simulator in accelerated time, the daemon's config file ----

PERIOD_S = 0.1  # a Keepa minute lasts 0.1 s in the simulator


def one_selection(
    cfg: UpserterConfig,
    *,
    domain: int = 1,
    name: str = "default",
    profit: ProfitConfig | None = None,
) -> Selection:
    """The selection an ``[upserter]`` table of the one-selection era makes."""
    return Selection(
        name=name, domain=domain, query=dict(cfg.selection), interval_s=cfg.interval_s,
        max_pages_per_run=cfg.max_pages_per_run, weight=1.0,
        profit=profit if profit is not None else ProfitConfig(), full_pass_h=cfg.full_pass_h,
    )  # fmt: skip


def sim_options(**kw: Any) -> SimOptions:
    """A fast, quiet simulator: no new or changed deals, nothing missing or invalid."""
    base: dict[str, Any] = dict(
        refill_rate=500,
        refill_period_s=PERIOD_S,
        catalogue_size=200,
        new_deals_per_period=0,
        changed_deals_per_period=0,
        missing_rate=0.0,
        invalid_rate=0.0,
    )
    base.update(kw)
    return SimOptions(**base)


# conftest's ``start_sim`` fixture: ``await start_sim(**changes to sim_options)``.
StartSim = Callable[..., Awaitable[Simulator]]


def write_config(
    tmp_path: Path,
    base_url: str,
    *,
    max_batch: int = 20,
    extra: str = "",
    backfiller: str = "",
    janitor: str = "interval_s = 1\ngrace_h = 1",
    selections: str | None = None,
    **keepa: object,
) -> Path:
    """``tmp_path/config.toml`` for a daemon on ``base_url``, intervals of a second.

    ``keepa`` replaces or adds ``[keepa]`` settings (timeouts, attempts, the
    key file); ``backfiller`` is added as it is to ``[backfiller]`` (lines of
    TOML), ``janitor`` is the ``[janitor]`` table's lines; ``extra`` is
    appended as it is (more tables). ``selections`` (``[[selection]]`` tables)
    replaces the one ``[upserter.selection]``.
    """
    one = "[upserter.selection]\npriceTypes = [2]\nsortType = 1"
    settings: dict[str, object] = {
        "base_url": base_url, "max_attempts": 2, "read_timeout_s": 5, "connect_timeout_s": 2,
        **keepa,
    }  # fmt: skip
    keepa_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[keepa]
{keepa_lines}

[database]
path = "{tmp_path / "deals.db"}"

[upserter]
interval_s = 1
max_pages_per_run = 67
# Below the janitor's 1 h grace (check-config warns otherwise): one full pass
# at the start of a test, then the newest-first polls.
full_pass_h = 0.5

{one if selections is None else ""}

[backfiller]
idle_s = 0.2
max_batch = {max_batch}
retry_base_s = 1
max_attempts = 2
{backfiller}

[janitor]
{janitor}

[tokens]
batch_minutes = 1.0
{extra}
{selections or ""}
"""
    )
    return path


# -- waiting, and reading the database as another process would ---------------


async def wait_for(
    pred: Callable[[], object],
    within: float = 5.0,
    what: str = "the condition",
    *,
    every: float = 0.05,
) -> None:
    """Poll ``pred`` in real time until it is true; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


def db_query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def counts(db: Path) -> tuple[int, int]:
    """(deals stored, deals backfilled); (0, 0) before the database exists."""
    if not db.exists():
        return 0, 0
    try:
        row = db_query(db, "SELECT count(*), count(backfilled_at) FROM deals")[0]
    except sqlite3.OperationalError:  # not migrated yet
        return 0, 0
    return int(row[0]), int(row[1])


# -- one worker's real parts, for a worker's own tests ---------------------------


@dataclass(frozen=True)
class WorkerParts:
    clock: SystemClock
    tokens: TokenScheduler
    store: Store
    health: Health
    client: KeepaClient


@asynccontextmanager
async def worker_parts(
    base_url: str,
    db: Path,
    *,
    name: str,
    weight: float = 1.0,
    expected_round_s: float = 30.0,
    api_key: str = "k",
) -> AsyncIterator[WorkerParts]:
    """What the daemon builds a worker from, real each: the store on ``db``, the
    scheduler with ``name`` as its one consumer, health with it registered, a
    client on ``base_url``. The store is closed on the way out."""
    clock = SystemClock()
    tokens = TokenScheduler(clock=clock, weights={name: weight}, batch_minutes=1.0)
    store = await Store.open(db, clock=clock)
    health = Health(clock=clock)
    health.register(name, expected_round_s=expected_round_s)
    try:
        async with KeepaClient(
            base_url=base_url, api_key=api_key, domain=1, tokens=tokens, clock=clock
        ) as client:
            yield WorkerParts(clock, tokens, store, health, client)
    finally:
        await store.close()


# -- the daemon in this event loop ----------------------------------------------


class Running:
    """The daemon as a task in this loop, with its stop event.

    One a failed test leaves running is stopped by conftest's ``_stop_leftovers``.
    """

    def __init__(self, cfg: Config, path: Path, *, api_key: str = "test-key", **kw: Any) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            run_daemon(
                cfg,
                api_key=api_key,
                clock=SystemClock(),
                notifier=kw.pop("notifier", None) or Notifier(None),
                stop=self.stop,
                config_path=path,
                install_signals=False,
                snapshot_every_s=kw.pop("snapshot_every_s", 0.2),
                **kw,
            )
        )

    async def finish(self) -> int:
        self.stop.set()
        return await asyncio.wait_for(self.task, 20)


class NotifyListener:
    """systemd's side of NOTIFY_SOCKET: a real datagram socket, read as lines."""

    def __init__(self, tmp_path: Path) -> None:
        self.addr = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.addr)
        self.sock.setblocking(False)
        self.got: list[str] = []

    def drain(self) -> list[str]:
        """The lines that arrived since the last drain (all are kept in ``got``)."""
        new: list[str] = []
        while True:
            try:
                new.extend(self.sock.recv(65536).decode().splitlines())
            except BlockingIOError:
                self.got.extend(new)
                return new

    def seen(self, prefix: str, since: int = 0) -> bool:
        """A line starting with ``prefix`` arrived (at or after index ``since`` of ``got``)."""
        self.drain()
        return any(m.startswith(prefix) for m in self.got[since:])

    def last_status(self) -> str:
        self.drain()
        return next((m for m in reversed(self.got) if m.startswith("STATUS=")), "")

    def close(self) -> None:
        self.sock.close()


# -- the daemon as a real process, and the CLI ---------------------------------

# A key nobody could mistake for anything else: it must never show up in a
# log line, a status output or the database file (docs/field-notes.md, docs/keepa.md).
SECRET = "SECRET-KEY-1234567890"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would configure dealsd or systemd's side."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALSD_", "KEEPA_"))}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class DaemonProc:
    """`python -m dealsd run --config X` as a real process; stderr kept whole."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = env if env is not None else clean_env(KEEPA_API_KEY=SECRET)
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> DaemonProc:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dealsd", "run", "--config", str(self.config),
            env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    async def ready(self, within: float = 20.0) -> None:
        """Wait for its ``ready`` log line: signal handlers are installed by then."""
        deadline = asyncio.get_running_loop().time() + within
        while b"ready" not in self.stderr:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"dealsd exited {self.proc.returncode}: {self.log_text()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"dealsd not ready: {self.log_text()[-2000:]}")
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, within: float = 30.0) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), within)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return rc

    async def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return await self.wait()

    def log_text(self) -> str:
        return self.stderr.decode(errors="replace")

    async def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.kill()


async def status(db: Path, *, as_json: bool) -> tuple[int, str]:
    """`dealsd status --database DB [--json]` through the real CLI."""
    args = ["status", "--database", str(db)] + (["--json"] if as_json else [])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dealsd", *args, env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def status_doc(db: Path) -> tuple[int, dict[str, Any]]:
    rc, text = await status(db, as_json=True)
    return rc, json.loads(text)


# -- the secret and the files on disk ------------------------------------------


def database_bytes(db: Path) -> bytes:
    """The database file and its WAL and shared memory, as bytes on disk."""
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(f"{db}{suffix}")
        if p.exists():
            out += p.read_bytes()
    return out


def assert_no_secret(*texts: str | bytes, key: str = SECRET) -> None:
    for t in texts:
        raw = t.encode() if isinstance(t, str) else t
        assert key.encode() not in raw, "the API key leaked"


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=10)  # read-write: recovers a WAL left by a kill
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def hold_write_lock(db: Path, hold_s: float) -> asyncio.subprocess.Process:
    """A separate OS process holding BEGIN IMMEDIATE for ``hold_s`` (tests/dashboard_proc.py).

    Returns once it says it holds the lock; its stdout's last line is a JSON report.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "dashboard_proc.py"), str(db), str(hold_s), "0.2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line.strip() == b"holding", line
    return proc
