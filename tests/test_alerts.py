"""Alerts: rules, the outbox written with the deal, delivery to a real HTTP receiver.

The channel is Apprise's ``json://`` pointed at an aiohttp server on
loopback: the message goes through Apprise and HTTP exactly as it would to a
webhook, and the receiver can be taken down and brought back.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from helpers import (
    DaemonProc,
    NotifyListener,
    Running,
    StartSim,
    counts,
    database_bytes,
    db_query,
    one_selection,
    wait_for,
    worker_parts,
    write_config,
)

from dealsd import estimate
from dealsd.alerts import message, outbox
from dealsd.alerts import queries as alert_queries
from dealsd.alerts.channels import Channel, Redactor, Sender, load_channels
from dealsd.alerts.outbox import Evaluator
from dealsd.alerts.rules import DealFacts, facts, matches
from dealsd.alerts.sender import AlertSender
from dealsd.clock import FakeClock, iso_utc, parse_iso_utc
from dealsd.config import (
    AlertRuleConfig,
    AlertsConfig,
    ConfigError,
    ProfitConfig,
    UpserterConfig,
    load_config,
)
from dealsd.notify import Notifier
from dealsd.simulator.catalogue import SALES, USED
from dealsd.status import read_status, render
from dealsd.store import Store, backfill
from dealsd.store.schema import apply_migrations
from dealsd.workers.upserter import Upserter

SECRET = "s3cr3t-webhook-token"


class Receiver:
    """A webhook on loopback: records each JSON message; can be down (HTTP 503)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.down = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _hook(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="down for maintenance")
        self.messages.append(await request.json())
        return web.Response(text="ok")

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, port: int | None = None) -> str:
        return f"json://user:{SECRET}@127.0.0.1:{port or self.port}/hook/{SECRET}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def rule(**kw: Any) -> AlertRuleConfig:
    return AlertRuleConfig(**{"name": "r", **kw})


def deal(**kw: Any) -> DealFacts:
    base: dict[str, Any] = dict(
        asin="B000000001", domain_id=1, title="A book", category=283155, buy_cents=500,
        all_in_cost_cents=650, expected_sale_cents=2500, profit_cents=1200, roi_pct=240.0,
        margin_pct=48.0,
        sales_rank=50_000, rank_drops_30=12, monthly_sold=None, backfilled=True,
    )  # fmt: skip
    base.update(kw)
    return DealFacts(**base)


# -- rules ---------------------------------------------------------------------


def test_every_threshold_must_pass_and_an_unknown_value_never_does() -> None:
    sel = ["default"]
    assert matches(rule(), deal(), selections=sel)
    assert matches(rule(min_profit_cents=1200, max_sales_rank=50_000), deal(), selections=sel)
    assert not matches(rule(min_profit_cents=1201), deal(), selections=sel)
    assert not matches(rule(min_roi_pct=241), deal(), selections=sel)
    assert not matches(rule(min_margin_pct=49), deal(), selections=sel)
    assert not matches(rule(max_sales_rank=49_999), deal(), selections=sel)
    assert not matches(rule(max_buy_cents=499), deal(), selections=sel)
    assert not matches(rule(categories=[1]), deal(), selections=sel)
    assert matches(rule(categories=[1, 283155]), deal(), selections=sel)
    # NULL is not a pass: no sales rank, no monthly sold figure.
    assert not matches(rule(max_sales_rank=10**9), deal(sales_rank=None), selections=sel)
    assert not matches(rule(min_monthly_sold=0), deal(), selections=sel)
    # Only the full estimate counts: a deal not yet backfilled never matches.
    assert not matches(rule(), deal(backfilled=False), selections=sel)
    assert not matches(rule(), deal(profit_cents=None), selections=sel)
    assert not matches(rule(selections=["other"]), deal(), selections=sel)


def test_a_rule_names_the_selections_it_watches_and_none_means_every_one() -> None:
    # ``selections``: those that matched the deal (deal_selections).
    both = ["books", "cheap"]
    assert matches(rule(), deal(), selections=both)
    assert matches(rule(selections=["cheap"]), deal(), selections=both)
    assert not matches(rule(selections=["de"]), deal(), selections=both)


def test_facts_take_the_estimates_buy_price_and_fall_back_to_the_deals() -> None:
    row = {
        "asin": "B1", "domain_id": 1, "title": None, "root_category": None,
        "current_amazon_cents": None, "current_new_cents": None, "current_used_cents": 800,
        "current_sales_rank": 7, "sales_rank_drops_30": None, "monthly_sold": None,
        "est_sales_per_month": 12, "buy_price_cents": 1199, "all_in_cost_cents": 1300,
        "expected_sale_cents": 3000, "profit_cents": 400, "margin_pct": 13.33,
        "roi_pct": 30.77, "backfilled_at": "2026-12-01T00:00:00Z",
    }  # fmt: skip
    f = facts(row, price_type=2)
    assert (f.buy_cents, f.all_in_cost_cents, f.roi_pct) == (1199, 1300, 30.77)
    assert (f.sales_rank, f.monthly_sold, f.backfilled) == (7, 12, True)  # the estimate's
    # No estimate yet: the deal's own current price for the price type, no ROI.
    bare = facts({**row, "buy_price_cents": None, "roi_pct": None}, price_type=2)
    assert (bare.buy_cents, bare.roi_pct) == (800, None)
    assert facts({**row, "monthly_sold": 40}, price_type=2).monthly_sold == 40  # Keepa's wins


# -- the outbox ------------------------------------------------------------------


def _db(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    apply_migrations(conn)
    return conn


def _put(
    conn: sqlite3.Connection, asin: str, *, used: int, profit: int | None, domain: int = 1
) -> None:
    conn.execute(
        "INSERT INTO deals (asin, domain_id, title, current_used_cents, profit_cents, "
        "margin_pct, expected_sale_cents, first_seen_at, last_seen_at, backfilled_at) "
        "VALUES (?, ?, 't', ?, ?, 10, 3000, 'x', 'x', 'x') ON CONFLICT (domain_id, asin) "
        "DO UPDATE SET current_used_cents = excluded.current_used_cents, "
        "profit_cents = excluded.profit_cents",
        (asin, domain, used, profit),
    )


def _queued(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    return [
        tuple(r)
        for r in conn.execute("SELECT rule, channel, asin, reason FROM alert_outbox ORDER BY id")
    ]


def test_a_deal_alerts_once_per_rule_and_channel_until_its_price_drops_a_step(
    tmp_path: Path,
) -> None:
    conn = _db(tmp_path)
    ev = Evaluator(
        rules=[rule(name="any", min_profit_cents=100), rule(name="phone", channels=["b"])],
        channels=["a", "b"], price_type=2, realert_drop_pct=10.0,
    )  # fmt: skip
    _put(conn, "B1", used=1000, profit=500)
    assert ev.on_deals_changed(conn, ["B1"], "t1") == 3  # any -> a, b; phone -> b
    assert _queued(conn) == [
        ("any", "a", "B1", "new"), ("any", "b", "B1", "new"), ("phone", "b", "B1", "new")
    ]  # fmt: skip
    assert ev.on_deals_changed(conn, ["B1"], "t2") == 0  # unchanged: not again
    _put(conn, "B1", used=910, profit=590)  # -9 %: less than the step
    assert ev.on_deals_changed(conn, ["B1"], "t3") == 0
    _put(conn, "B1", used=900, profit=600)  # -10 % of the alerted 1000: the step
    assert ev.on_deals_changed(conn, ["B1"], "t4") == 3
    assert {r[3] for r in _queued(conn)[3:]} == {"price_drop"}
    _put(conn, "B1", used=820, profit=680)  # -8.9 % of the new 900: not yet
    assert ev.on_deals_changed(conn, ["B1"], "t5") == 0


def test_a_deal_that_stops_matching_alerts_again_when_it_matches_again(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    ev = Evaluator(
        rules=[rule(min_profit_cents=100)], channels=["a"], price_type=2, realert_drop_pct=10
    )
    _put(conn, "B1", used=1000, profit=500)
    assert ev.on_deals_changed(conn, ["B1"], "t1") == 1
    _put(conn, "B1", used=1400, profit=50)
    assert ev.on_deals_changed(conn, ["B1"], "t2") == 0
    assert conn.execute("SELECT matching FROM alert_state").fetchone()[0] == 0
    _put(conn, "B1", used=1050, profit=450)  # dearer than the first alert, but new again
    assert ev.on_deals_changed(conn, ["B1"], "t3") == 1
    assert [r[3] for r in _queued(conn)] == ["new", "new"]


def test_nothing_is_queued_for_a_deal_not_yet_backfilled(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    conn.execute(
        "INSERT INTO deals (asin, domain_id, current_used_cents, first_seen_at, last_seen_at) "
        "VALUES ('B2', 1, 100, 'x', 'x')"
    )
    ev = Evaluator(rules=[rule()], channels=["a"], price_type=2, realert_drop_pct=10)
    assert ev.on_deals_changed(conn, ["B2", "B-not-there"], "t") == 0
    assert _queued(conn) == []


def test_a_change_on_one_marketplace_evaluates_only_its_deal(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    ev = Evaluator(rules=[rule()], channels=["a"], price_type=2, realert_drop_pct=10)
    _put(conn, "B1", used=1000, profit=500, domain=1)
    _put(conn, "B1", used=900, profit=400, domain=3)  # the same ASIN on amazon.de
    assert ev.on_deals_changed(conn, ["B1"], "t1", 3) == 1
    assert conn.execute("SELECT domain_id, asin FROM alert_outbox").fetchall() == [(3, "B1")]
    assert ev.on_deals_changed(conn, ["B1"], "t2", 1) == 1
    assert ev.on_deals_changed(conn, ["B1"], "t3") == 0  # both already alerted


# -- messages ----------------------------------------------------------------------


def test_a_message_names_what_a_buyer_decides_with_and_blank_is_a_dash() -> None:
    alert = outbox.Pending(
        id=1, rule="books", channel="a", reason="new", attempts=0, created_at="t",
        facts=deal(title="Dune", monthly_sold=None),
    )  # fmt: skip
    title, body = message.single(alert)
    assert title == "$12.00 profit: Dune"
    for part in (
        "Buy: **$5.00** with shipping (all-in $6.50)", "expected sale $25.00",
        "ROI 240%", "margin 48%",
        "Sales rank 50,000", "sales per month -", "rule *books*",
        "https://www.amazon.com/dp/B000000001", "https://keepa.com/#!product/1-B000000001",
    ):  # fmt: skip
        assert part in body, part
    many = [
        outbox.Pending(
            id=i, rule="r", channel="a", reason="new", attempts=0, created_at="t",
            facts=deal(asin=f"B{i:09d}", profit_cents=i * 100),
        )
        for i in range(1, 61)
    ]
    title, body = message.digest(many)
    assert title == "60 deals worth a look"
    lines = body.splitlines()
    assert lines[0].startswith("- $60.00 profit") and len(lines) == 51
    assert lines[-1] == "- … and 10 more: `dealsd alerts list`"


def test_a_message_is_in_its_marketplaces_currency_and_yen_have_no_cents() -> None:
    def pending(i: int, domain_id: int, profit: int, roi: float = 50.0) -> outbox.Pending:
        facts = deal(
            asin=f"B{i:09d}", domain_id=domain_id, profit_cents=profit, buy_cents=1999, roi_pct=roi
        )
        return outbox.Pending(
            id=i, rule="r", channel="a", reason="new", attempts=0, created_at="t", facts=facts
        )

    title, body = message.single(pending(1, 5, 1500))
    assert title.startswith("¥1,500 profit") and "Buy: **¥1,999**" in body
    assert "https://www.amazon.co.jp/dp/B000000001" in body
    assert "https://keepa.com/#!product/5-B000000001" in body
    title, body = message.single(pending(2, 3, -350))
    assert title.startswith("-€3.50 profit") and "Buy: **€19.99**" in body
    assert message.single(pending(3, 2, 1234))[0].startswith("£12.34 profit")
    # Yen and dollars do not compare without an exchange rate: a mixed digest
    # ranks by ROI (a single currency's, by profit, as above).
    _, body = message.digest([pending(1, 5, 1500, roi=20.0), pending(4, 1, 1200, roi=30.0)])
    assert body.splitlines()[0].startswith("- $12.00 profit")
    assert body.splitlines()[1].startswith("- ¥1,500 profit, buy ¥1,999")


# -- channels ------------------------------------------------------------------------


def test_channels_file_bad_input_exits_78_naming_the_key(tmp_path: Path) -> None:
    f = tmp_path / "channels"

    def load(text: str, **kw: Any) -> Any:
        f.write_text(text)
        cfg = AlertsConfig(channels_file=str(f), rule=[rule(**kw)])
        return load_channels(cfg, env={})

    assert [c.name for c in load("# mine\na = json://127.0.0.1:9/x\n")] == ["a"]
    cases = [
        ("a = notaurl://x\n", {}, "alerts.channels_file", "line 1: a: Apprise does not understand"),
        ("just words\n", {}, "alerts.channels_file", "line 1: expected `name = url`"),
        ("a = json://h/x\na = json://h/y\n", {}, "alerts.channels_file", "defined twice"),
        ("a = json://127.0.0.1:9/x\n", {"channels": ["b"]}, "alerts.rule[0].channels", "'b'"),
    ]
    for text, kw, key, words in cases:
        with pytest.raises(ConfigError) as info:
            load(text, **kw)
        assert info.value.key == key and words in str(info.value), str(info.value)
    with pytest.raises(ConfigError) as info:
        load_channels(AlertsConfig(rule=[rule()]), env={})
    assert info.value.key == "alerts.channels_file"
    # The systemd credential wins over the file.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "alert_channels").write_text("cred = json://127.0.0.1:9/c\n")
    got = load_channels(
        AlertsConfig(channels_file=str(f), rule=[rule()]), env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert [c.name for c in got] == ["cred"]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[[alerts.rule]]\nname = "x"\nmin_profitt = 1\n', "alerts.rule[0].min_profitt"),
        ('[[alerts.rule]]\nname = "x"\nselections = ["toys"]\n', "alerts.rule[0].selections"),
        ('[[alerts.rule]]\nname = "x"\n[[alerts.rule]]\nname = "x"\n', "alerts.rule[1].name"),
        ("[alerts]\nmax_per_minute = 0\n", "alerts.max_per_minute"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key, str(info.value)


def test_the_redactor_removes_every_piece_of_every_url() -> None:
    url = f"tgram://123456:{SECRET}/-100200300/"
    red = Redactor([url, "discord://webhookid/tok-en"])
    text = f"failed to send to {url} (bot 123456:{SECRET}, chat -100200300, webhookid)"
    out = red(text)
    for piece in (SECRET, "123456", "100200300", "webhookid"):
        assert piece not in out, out
    assert Channel("a", url).shown == "tgram://***"


async def test_sender_delivers_through_apprise_and_reports_a_redacted_failure(
    receiver: Receiver,
) -> None:
    sender = Sender([Channel("hook", receiver.url())], timeout_s=10)
    assert await sender.send("hook", title="T", body="**B**") is None
    assert [(m["title"], m["message"]) for m in receiver.messages] == [("T", "**B**")]
    receiver.down = True
    error = await sender.send("hook", title="T", body="B")
    assert error is not None and SECRET not in error, error
    dead = Sender([Channel("gone", receiver.url(port=1))], timeout_s=10)
    error = await dead.send("gone", title="T", body="B")
    assert error is not None and SECRET not in error, error


# -- the sender worker ----------------------------------------------------------------


async def _filled_store(tmp_path: Path, clock: FakeClock, n: int) -> Store:
    store = await Store.open(tmp_path / "s.db", clock=clock)
    ev = Evaluator(rules=[rule()], channels=["hook"], price_type=2, realert_drop_pct=10)

    def fill(conn: sqlite3.Connection) -> int:
        for i in range(n):
            _put(conn, f"B{i:09d}", used=1000, profit=100 + i)
        return ev.on_deals_changed(conn, [f"B{i:09d}" for i in range(n)], iso_utc(clock.now()))

    assert await store.write(fill) == n
    return store


def _hook_sender(
    store: Store, clock: FakeClock, cfg: AlertsConfig, receiver: Receiver
) -> AlertSender:
    """The sender worker to the receiver's one channel, jitter pinned at 1.0."""
    return AlertSender(
        store=store, clock=clock, config=cfg,
        channels=Sender([Channel("hook", receiver.url())]), rand=lambda: 1.0,
    )  # fmt: skip


async def test_worker_sends_one_each_under_the_limit_and_a_digest_over_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    store = await _filled_store(tmp_path, clock, 3)
    cfg = AlertsConfig(max_per_minute=5, retry_base_s=30, rule=[rule()])
    worker = _hook_sender(store, clock, cfg, receiver)
    try:
        result = await worker.round()
        assert result.progressed == 3 and len(receiver.messages) == 3
        assert all("profit" in m["title"] for m in receiver.messages)
        # 2 messages left in this minute's budget, 7 due: one digest of all 7.
        ev = Evaluator(rules=[rule()], channels=["hook"], price_type=2, realert_drop_pct=10)

        def more(conn: sqlite3.Connection) -> int:
            for i in range(100, 107):
                _put(conn, f"B{i:09d}", used=1000, profit=200)
            return ev.on_deals_changed(
                conn, [f"B{i:09d}" for i in range(100, 107)], iso_utc(clock.now())
            )

        assert await store.write(more) == 7
        result = await worker.round()
        assert result.progressed == 7 and len(receiver.messages) == 4
        assert receiver.messages[-1]["title"] == "7 deals worth a look"
        assert (await worker.round()).idle
        assert len(receiver.messages) == 4  # nothing is sent twice
    finally:
        await store.close()


async def test_a_channel_down_for_hours_gets_one_digest_when_it_is_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    # More than one old round's read (1,000): a long outage's backlog is still one digest.
    queued = 1_200
    store = await _filled_store(tmp_path, clock, queued)
    cfg = AlertsConfig(max_per_minute=10, retry_base_s=30, retry_max_s=900, rule=[rule()])
    worker = _hook_sender(store, clock, cfg, receiver)
    try:
        receiver.down = True

        def retry_in(conn: sqlite3.Connection) -> set[float]:
            rows = conn.execute("SELECT next_try_at FROM alert_outbox WHERE sent_at IS NULL")
            return {parse_iso_utc(r[0]) - clock.now() for r in rows}

        for attempt in range(8):  # two hours of retries, each delay doubled up to the cap
            await worker.round()
            # Every queued alert waits the same doubled delay (jitter pinned at 1.0).
            assert await store.read(retry_in) == {min(900.0, 30.0 * 2**attempt)}
            await clock.advance(900.0)
        assert receiver.messages == []
        summary = await store.read(alert_queries.summary)
        assert summary[0]["queued"] == queued and summary[0]["last_error"]
        assert SECRET not in json.dumps(summary)
        # `dealsd status` shows the failing channel, its queue and its error.
        doc = await asyncio.to_thread(read_status, tmp_path / "s.db", now=clock.now())
        assert [(c.channel, c.queued) for c in doc.alerts] == [("hook", queued)]
        assert doc.alerts[0].failing_since is not None
        text = render(doc, now=clock.now())
        assert f"alerts hook: {queued} queued, 0 sent; FAILING since" in text
        assert SECRET not in text
        receiver.down = False
        await clock.advance(900.0)
        await worker.round()
        assert len(receiver.messages) == 1
        assert receiver.messages[0]["title"] == f"{queued} deals worth a look"
        # Best profit first, of all of them (the last filled has the most).
        best = (100 + queued - 1) / 100
        assert receiver.messages[0]["message"].startswith(f"- ${best:.2f} profit")
        summary = await store.read(alert_queries.summary)
        assert summary[0]["queued"] == 0 and summary[0]["failing_since"] is None
        assert summary[0]["sent_total"] == queued
    finally:
        await store.close()


async def test_a_failing_channel_is_said_once_at_warning_then_counted(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A channel down for a minute and a half, tried every second: one warning,
    one summary with the count after a minute, one recovery line with the total;
    none of them carries the channel's secret."""
    clock = FakeClock(start=1_800_000_000.0)
    store = await _filled_store(tmp_path, clock, 1)
    # Retried after exactly 1 s (jitter pinned at 1.0): one failed send a second.
    cfg = AlertsConfig(retry_base_s=1, retry_max_s=1, rule=[rule()])
    worker = _hook_sender(store, clock, cfg, receiver)
    try:
        receiver.down = True
        with structlog.testing.capture_logs() as logs:
            for _ in range(90):
                await worker.round()
                await clock.advance(1.0)
            receiver.down = False
            await worker.round()
        assert len(receiver.messages) == 1  # the send did go on being tried
        said = [e for e in logs if e["event"] == "alert_send_failed"]
        first, summary, recovered = said  # 91 sends, three lines
        assert first["log_level"] == "warning" and "repeated" not in first
        assert first["channel"] == "hook" and first["error"]
        # At most a line a minute: the 61st failure says the 60 since the first.
        assert summary["log_level"] == "warning" and summary["repeated"] == 60
        assert recovered["log_level"] == "info" and recovered["recovered"] is True
        assert recovered["failures"] == 90 and recovered["lasted_s"] == 90.0
        assert SECRET not in json.dumps(logs, default=str)
    finally:
        await store.close()


# -- end to end --------------------------------------------------------------------


def _alerts_toml(channels: Path, rules: str) -> str:
    # The simulator's products carry new-price averages (not used ones): the
    # estimate resells at the new average, so deals have a profit to match.
    return (
        f'\n[profit]\nreference = "new"\n[alerts]\nchannels_file = "{channels}"\n'
        f"poll_s = 0.2\nretry_base_s = 0.5\n{rules}"
    )


async def test_a_matching_deal_arrives_and_a_non_matching_rule_never_sends(
    tmp_path: Path, receiver: Receiver, start_sim: StartSim
) -> None:
    sim = await start_sim(catalogue_size=150)
    channels = tmp_path / "channels"
    channels.write_text(f"hook = {receiver.url()}\n")
    rules = (
        '[[alerts.rule]]\nname = "any"\nmin_profit_cents = -100000\n'
        '[[alerts.rule]]\nname = "never"\nmin_profit_cents = 100000000\n'
    )
    path = write_config(tmp_path, sim.base_url, extra=_alerts_toml(channels, rules))
    cfg = load_config(path)
    sender = Sender(load_channels(cfg.alerts, env={}))
    db = tmp_path / "deals.db"
    run = Running(cfg, path, alert_channels=sender)
    try:
        await wait_for(lambda: counts(db)[1] >= 20, 20, "a backfill")
        await wait_for(lambda: len(receiver.messages) >= 1, 20, "an alert")
        rules_sent = {
            r["rule"] for r in db_query(db, "SELECT DISTINCT rule FROM alert_outbox")
        }
        assert rules_sent == {"any"}
    finally:
        assert await run.finish() == 0
    text = json.dumps(receiver.messages)
    assert "profit" in text and "amazon.com/dp/" in text
    assert SECRET.encode() not in database_bytes(db)


async def test_a_price_drop_at_keepa_of_the_step_alerts_again_and_a_smaller_one_does_not(
    tmp_path: Path, receiver: Receiver, start_sim: StartSim
) -> None:
    """A re-alert end to end: the deal's price moves at the simulator's /deal, the
    upserter stores it and recomputes the estimate, whose buy price is what the
    step compares (without `offers` the deal's used price plus buy_shipping_cents,
    0 here); only a drop of realert_drop_pct since the alert sends again."""
    # 150 deals are one /deal page: every fresh pass (each second) re-reads each deal.
    sim = await start_sim(catalogue_size=150)
    listed = [d for d in sim.catalogue.listed() if d["current"][USED] > 0]
    ranked = [d for d in listed if d["current"][SALES] > 0]
    # The deal with the best sales rank and a rule only it passes: every alert
    # is that deal's, whatever the other 149 deals do.
    target = min(ranked, key=lambda d: int(d["current"][SALES]))
    asin, rank = str(target["asin"]), int(target["current"][SALES])
    assert [d["asin"] for d in ranked if d["current"][SALES] <= rank] == [asin]
    channels = tmp_path / "channels"
    channels.write_text(f"hook = {receiver.url()}\n")
    rules = f'realert_drop_pct = 10\n[[alerts.rule]]\nname = "best"\nmax_sales_rank = {rank}\n'
    path = write_config(tmp_path, sim.base_url, extra=_alerts_toml(channels, rules))
    cfg = load_config(path)
    db = tmp_path / "deals.db"

    def messages() -> list[dict[str, Any]]:
        return [m for m in receiver.messages if f"/dp/{asin}" in m["message"]]

    def reasons() -> list[str]:
        q = "SELECT reason FROM alert_outbox WHERE asin = ? ORDER BY id"
        return [str(r["reason"]) for r in db_query(db, q, (asin,))]

    def buy_price() -> int | None:
        rows = db_query(db, "SELECT buy_price_cents FROM deals WHERE asin = ?", (asin,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def alerted_at() -> int:
        q = "SELECT alerted_buy_cents FROM alert_state WHERE rule = 'best' AND asin = ?"
        return int(db_query(db, q, (asin,))[0][0])

    run = Running(cfg, path, alert_channels=Sender(load_channels(cfg.alerts, env={})))
    try:
        await wait_for(lambda: len(messages()) == 1, 40, "the deal's backfill and first alert")
        alerted = alerted_at()
        assert alerted == target["current"][USED] == buy_price()
        # -5 %: a drop, but less than the step.
        small = int(sim.reprice(asin, 0.95)["current"][USED])
        assert alerted * 0.9 < small < alerted
        await wait_for(lambda: buy_price() == small, 20, "the smaller price stored")
        # The evaluator ran in the write that stored it and queued nothing...
        assert reasons() == ["new"]
        # ...nor on the passes after it, each of which reads the deal again,
        # while the sender polls five times a second.
        pages = sim.deal_pages
        await wait_for(lambda: sim.deal_pages >= pages + 3, 20, "three more /deal pages")
        assert reasons() == ["new"] and len(messages()) == 1
        assert alerted_at() == alerted  # the step still counts from the alerted price
        # -20 % of the alerted price: the step and more.
        big = int(sim.reprice(asin, 0.84)["current"][USED])
        assert big < alerted * 0.9
        await wait_for(lambda: len(messages()) == 2, 20, "the price drop's alert")
        assert reasons() == ["new", "price_drop"]
        assert alerted_at() == big == buy_price()
        assert f"Buy: **{message.money(big, 1)}**" in messages()[1]["message"]
    finally:
        assert await run.finish() == 0
    outbox_asins = {r[0] for r in db_query(db, "SELECT DISTINCT asin FROM alert_outbox")}
    assert outbox_asins == {asin} and len(receiver.messages) == 2


async def test_a_drop_alerts_again_when_the_buy_price_was_keepas_price_with_shipping(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """With `offers`, the buy price is Keepa's lowest price with shipping, bought
    once with the product; the deal's own price then moves only in /deal. A drop
    of the step seen by the upserter must still reach the buy price, and alert."""
    sim = await start_sim(catalogue_size=100)
    target = next(d for d in sim.catalogue.listed() if d["current"][USED] >= 1000)
    asin, used = str(target["asin"]), int(target["current"][USED])
    ship = 250  # the shipping of the lowest used offer; buy_shipping_cents says the same
    profit = ProfitConfig(reference="new", buy_shipping_cents=ship)
    # Every round one pass of every deal, newest first (100 deals: one page).
    newest_first = {"priceTypes": [USED], "sortType": 1}
    cfg = UpserterConfig(interval_s=300, full_pass_h=0, selection=newest_first)
    sel = one_selection(cfg, profit=profit)
    ev = Evaluator(rules=[rule()], channels=["hook"], price_type=USED, realert_drop_pct=10)
    db = tmp_path / "deals.db"

    def buy() -> int:
        return int(db_query(db, "SELECT buy_price_cents FROM deals WHERE asin = ?", (asin,))[0][0])

    def reasons() -> list[str]:
        q = "SELECT reason FROM alert_outbox WHERE asin = ? ORDER BY id"
        return [str(r[0]) for r in db_query(db, q, (asin,))]

    async with worker_parts(sim.base_url, db, name=sel.worker) as parts:
        up = Upserter(
            client=parts.client, tokens=parts.tokens, store=parts.store, clock=parts.clock,
            selection=sel, health=parts.health, on_change=ev.on_deals_changed,
        )  # fmt: skip
        await up.round()
        now = iso_utc(parts.clock.now())

        def backfilled(conn: sqlite3.Connection) -> int:
            # As the backfiller stores a product bought with `offers`: its
            # columns, and the estimate made from them and the row.
            row = backfill.deal_by_asin(conn, asin) or {}
            cols: dict[str, object] = {
                "avg90_new_cents": used * 3, "current_used_shipping_cents": used + ship,
            }  # fmt: skip
            cols.update(estimate.estimate(
                {**row, **cols}, buy_cost_cents=used, price_type=USED, profit=profit
            ))  # fmt: skip
            backfill.store_product(
                conn, asin=asin, fetched_at=now, keepa_last_update=None, tokens_spent=7,
                payload_zlib=None, columns={**cols, "backfilled_at": now},
            )  # fmt: skip
            return ev.on_deals_changed(conn, [asin], now)

        assert await parts.store.write(backfilled) == 1
        assert buy() == used + ship and reasons() == ["new"]
        await up.round()  # the same price seen again: nothing moves
        assert buy() == used + ship and reasons() == ["new"]
        dropped = int(sim.reprice(asin, 0.8)["current"][USED])  # -20 %, the step and more
        await up.round()
        # Keepa's price with shipping was for the offers before the drop: the
        # configured shipping stands in for it now.
        assert buy() == dropped + ship
        assert reasons() == ["new", "price_drop"]


async def test_sigkill_between_commit_and_send_loses_no_alert(
    tmp_path: Path, receiver: Receiver, start_sim: StartSim
) -> None:
    """A real daemon process queues alerts while the channel is unreachable, is
    killed with SIGKILL, and delivers them after its restart."""
    sim = await start_sim(catalogue_size=150)
    port = receiver.port
    await receiver.stop()  # nothing listens: every send fails until it is back
    channels = tmp_path / "channels"
    channels.write_text(f"hook = {receiver.url(port=port)}\n")
    rules = '[[alerts.rule]]\nname = "any"\nmin_profit_cents = -100000\nchannels = ["hook"]\n'
    path = write_config(tmp_path, sim.base_url, extra=_alerts_toml(channels, rules))
    db = tmp_path / "deals.db"

    def unsent(up_to: int = 2**62) -> int:
        if not db.exists():
            return 0
        try:
            q = "SELECT count(*) FROM alert_outbox WHERE sent_at IS NULL AND id <= ?"
            return int(db_query(db, q, (up_to,))[0][0])
        except sqlite3.OperationalError:  # not migrated yet
            return 0

    def failing() -> bool:
        q = "SELECT count(*) FROM alert_channels WHERE failing_since IS NOT NULL"
        return unsent() >= 5 and int(db_query(db, q)[0][0]) == 1

    first = await DaemonProc(path).start()
    second = DaemonProc(path)
    try:
        await wait_for(failing, 30, "alerts queued and a failed send")
        assert await first.kill() == -signal.SIGKILL  # no chance to send or mark anything
        queued = unsent()
        assert queued >= 5
        last = int(db_query(db, "SELECT max(id) FROM alert_outbox")[0][0])
        await receiver.start(port)
        await second.start()
        # Everything queued before the kill goes out (new deals keep queueing
        # more meanwhile, within the minute's budget).
        await wait_for(lambda: unsent(last) == 0, 30, "the killed run's alerts delivered")
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0, second.log_text()[-2000:]
    finally:
        await first.ensure_dead()
        await second.ensure_dead()
    delivered = sum(
        int(m["title"].split()[0]) if m["title"].endswith("worth a look") else 1
        for m in receiver.messages
    )
    assert delivered >= queued
    assert "alert_send_failed" in first.log_text()  # the failure was logged...
    for run in (first, second):
        assert SECRET not in run.log_text()  # ...without the URL's secret
    listing = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dealsd", "alerts", "list", "--database", str(db),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(listing.communicate(), 30)
    assert listing.returncode == 0, err.decode()
    assert out.decode().startswith("channel hook: ") and SECRET not in out.decode()
    # Each alert's profit in its marketplace's money (the simulator is amazon.com).
    assert re.search(r" -?\$[\d,]+\.\d{2}  ", out.decode()), out.decode()


# -- commands and the optional extra ------------------------------------------------


def _run_cli(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    prog = f"import sys\n{code}\nfrom dealsd.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", prog, *args], capture_output=True, text=True, timeout=60
    )


async def test_alerts_test_reports_each_channel_and_fails_when_one_does(
    tmp_path: Path, receiver: Receiver
) -> None:
    channels = tmp_path / "channels"
    channels.write_text(f"good = {receiver.url()}\ndead = {receiver.url(port=1)}\n")
    path = tmp_path / "c.toml"
    path.write_text(
        f'[alerts]\nchannels_file = "{channels}"\n'
        '[[alerts.rule]]\nname = "all"\n[[alerts.rule]]\nname = "one"\nchannels = ["good"]\n'
    )
    every = await asyncio.to_thread(_run_cli, "alerts", "test", "--config", str(path))
    assert every.returncode == 1, every.stderr
    lines = every.stdout.splitlines()
    assert lines[0] == "good (json://***): sent"
    assert lines[1].startswith("dead (json://***): FAILED: ") and len(lines) == 2
    assert SECRET not in every.stdout + every.stderr
    args = ("alerts", "test", "--config", str(path), "--rule", "one")
    one = await asyncio.to_thread(_run_cli, *args)
    assert (one.returncode, one.stdout) == (0, "good (json://***): sent\n")
    assert [m["title"] for m in receiver.messages] == ["dealsd: test alert"] * 2


def test_a_rule_without_the_alerts_extra_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[alerts.rule]]\nname = "x"\n')
    # Apprise made unimportable in that process, as on an install without the extra.
    r = _run_cli("check-config", "--config", str(path), code="sys.modules['apprise'] = None")
    assert r.returncode == 78, r.stderr
    assert "alerts.rule" in r.stderr and "dealsd[alerts]" in r.stderr
    plain = tmp_path / "plain.toml"
    plain.write_text("[alerts]\nmax_per_minute = 3\n")  # no rule: no extra needed
    r = _run_cli("check-config", "--config", str(plain), code="sys.modules['apprise'] = None")
    assert r.returncode == 0, r.stderr


async def test_a_reload_applies_new_rules_live(
    tmp_path: Path, receiver: Receiver, start_sim: StartSim
) -> None:
    sim = await start_sim(catalogue_size=150)
    channels = tmp_path / "channels"
    channels.write_text(f"hook = {receiver.url()}\n")
    never = '[[alerts.rule]]\nname = "never"\nmin_profit_cents = 100000000\n'
    path = write_config(tmp_path, sim.base_url, extra=_alerts_toml(channels, never))
    db = tmp_path / "deals.db"
    daemon = await DaemonProc(path).start()
    try:
        await daemon.ready()
        await wait_for(lambda: counts(db)[1] >= 50, 30, "a backfill")
        assert receiver.messages == []
        anything = '[[alerts.rule]]\nname = "any"\nmin_profit_cents = -100000\n'
        write_config(tmp_path, sim.base_url, extra=_alerts_toml(channels, anything))
        daemon.signal(signal.SIGHUP)
        # Deals already stored match on their next change (the upserter's
        # pass re-reads every deal each second here).
        await wait_for(lambda: receiver.messages, 30, "an alert under the new rule")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.ensure_dead()
    assert {r["rule"] for r in db_query(db, "SELECT DISTINCT rule FROM alert_outbox")} == {"any"}


@pytest.mark.parametrize(
    ("channels", "rule", "key"),
    [
        ("a = notaurl://x\n", "", "alerts.channels_file"),
        ("a = json://127.0.0.1:9/x\n", 'channels = ["nope"]\n', "alerts.rule[0].channels"),
        ("a = json://127.0.0.1:9/x\n", "min_profitt = 3\n", "alerts.rule[0].min_profitt"),
        ("a = json://127.0.0.1:9/x\n", 'selections = ["toys"]\n', "alerts.rule[0].selections"),
    ],
)
def test_check_config_and_run_exit_78_naming_the_key(
    tmp_path: Path, channels: str, rule: str, key: str
) -> None:
    secret_channels = tmp_path / "channels"
    secret_channels.write_text(channels.replace("x\n", f"{SECRET}\n"))
    path = tmp_path / "c.toml"
    path.write_text(
        f'[database]\npath = "{tmp_path / "d.db"}"\n[alerts]\n'
        f'channels_file = "{secret_channels}"\n[[alerts.rule]]\nname = "r"\n{rule}'
    )
    for cmd in ("check-config", "run"):
        r = _run_cli(cmd, "--config", str(path), code="import os; os.environ['KEEPA_API_KEY']='k'")
        assert r.returncode == 78, (cmd, r.stderr)
        assert f": {key}: " in r.stderr and SECRET not in r.stderr, (cmd, r.stderr)


def test_check_config_warns_when_no_channels_are_visible(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[alerts.rule]]\nname = "r"\n')
    r = _run_cli("check-config", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "LoadCredential=alert_channels:/etc/dealsd/alert_channels" in r.stderr


async def test_a_failing_channel_keeps_the_watchdog_and_health_going(
    tmp_path: Path, receiver: Receiver, start_sim: StartSim
) -> None:
    """A restart cannot fix a revoked webhook: the daemon stays healthy, pings
    the watchdog, and shows the channel's failure in status instead."""
    sim = await start_sim(catalogue_size=150)
    receiver.down = True
    channels = tmp_path / "channels"
    channels.write_text(f"hook = {receiver.url()}\n")
    rules = '[[alerts.rule]]\nname = "any"\nmin_profit_cents = -100000\n'
    path = write_config(tmp_path, sim.base_url, extra=_alerts_toml(channels, rules))
    cfg = load_config(path)
    srv = NotifyListener(tmp_path)
    notifier = Notifier(srv.addr, watchdog_interval_s=0.2)
    db = tmp_path / "deals.db"
    run = Running(
        cfg, path, notifier=notifier, health_margin_s=1.5,
        alert_channels=Sender(load_channels(cfg.alerts, env={})),
    )  # fmt: skip
    try:
        await wait_for(
            lambda: db_query(db, "SELECT count(*) FROM alert_channels WHERE failing_since "
                             "IS NOT NULL")[0][0] == 1 if counts(db)[0] else False,
            30, "a failing channel",
        )  # fmt: skip
        srv.drain()
        await asyncio.sleep(3.0)  # two health margins with every send failing
        lines = srv.drain()
        assert "WATCHDOG=1" in lines
        assert srv.last_status().endswith(" healthy"), srv.last_status()
        doc = await asyncio.to_thread(read_status, db)
        assert doc.healthy and doc.alerts[0].failing_since and doc.alerts[0].queued > 0
        assert SECRET not in (doc.alerts[0].last_error or "")
    finally:
        assert await run.finish() == 0
        srv.close()
