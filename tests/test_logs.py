"""Logs: the journal line format, stdlib routing, redaction, levels, repeat suppression."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from yarl import URL

from dealsd.clock import FakeClock
from dealsd.logs import FailureLog, configure_logging, logfmt, resolve_format, set_level

SECRET = "s3cr3tKEEPAkey0123456789"
JOURNAL_ENV = {"JOURNAL_STREAM": "8:12345"}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")

# Created at import, before any configure_logging: as the daemon's modules do.
module_log = structlog.get_logger("dealsd.test_module")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def journal(level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    assert configure_logging(level, "auto", stream=stream, env=JOURNAL_ENV) == "journal"
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_journal_line_priority_no_timestamp_and_escaping() -> None:
    out = journal()
    log = structlog.get_logger("dealsd.daemon")
    log.debug("hidden", n=1)
    log.info("ready", db="/var/lib/deal s.db", note='say "hi"\nbye', empty="", n=3, ok=True)
    log.warning("slow", after_s=1.5)
    log.error("failed", error="boom")
    log.critical("dead")
    got = lines(out)
    assert got == [
        '<6>event=ready db="/var/lib/deal s.db" note="say \\"hi\\"\\nbye" empty="" n=3 ok=true'
        " logger=dealsd.daemon",
        "<4>event=slow after_s=1.5 logger=dealsd.daemon",
        "<3>event=failed error=boom logger=dealsd.daemon",
        "<3>event=dead logger=dealsd.daemon",
    ]
    assert not any(ISO.search(line) for line in got)


def test_journal_exception_is_one_line_and_only_when_asked() -> None:
    out = journal()
    log = structlog.get_logger("dealsd.worker")
    try:
        raise ValueError("bad page\nsecond line")
    except ValueError as exc:
        log.error("round_failed", exc_info=True)
        log.warning("round_failed_again", error=str(exc))
    first, second = lines(out)
    assert first.startswith('<3>event=round_failed exception="Traceback (most recent call')
    assert "ValueError: bad page\\nsecond line" in first
    assert "Traceback" not in second and second.startswith("<4>event=round_failed_again")


def test_stdlib_loggers_are_routed_through_the_same_format() -> None:
    out = journal()
    logging.getLogger("aiohttp.client").warning("Unclosed client session %s", "0x7f")
    logging.getLogger("aiohttp.access").debug("below the level")
    try:
        raise RuntimeError("never retrieved")
    except RuntimeError:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
    got = lines(out)
    assert got[0] == '<4>event="Unclosed client session 0x7f" logger=aiohttp.client'
    assert len(got) == 2
    assert got[1].startswith('<3>event="Task exception was never retrieved" exception=')
    assert "RuntimeError: never retrieved" in got[1] and got[1].endswith("logger=asyncio")


def test_reconfiguring_replaces_the_handler_instead_of_doubling_lines() -> None:
    journal()
    out = journal()
    structlog.get_logger("x").info("once")
    assert lines(out) == ["<6>event=once logger=x"]


@pytest.mark.parametrize("fmt", ["journal", "logfmt", "json", "console"])
def test_the_api_key_is_redacted_everywhere(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("debug", fmt, stream=out, env={})
    url = f"https://api.keepa.com/product?key={SECRET}&domain=1&asin=B0D8W1YVBX"
    log = structlog.get_logger("dealsd.keepa")
    log.info("request", url=url, yurl=URL(url), nested={"urls": [url]})
    log.info(f"event text {url}")
    logging.getLogger("aiohttp.client").error("failed %s", url)
    try:
        raise ConnectionError(f"Cannot connect to {url}")
    except ConnectionError:
        log.error("connect_failed", exc_info=True)
    text = out.getvalue()
    assert SECRET not in text
    assert text.count("key=***") >= 6


def test_json_lines() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out, env=JOURNAL_ENV)
    structlog.get_logger("dealsd.x").info("stored", deals=150)
    logging.getLogger("aiohttp").warning("plain")
    first, second = (json.loads(line) for line in lines(out))
    assert first["event"] == "stored" and first["deals"] == 150 and first["level"] == "info"
    assert ISO.match(first["timestamp"])
    assert second["logger"] == "aiohttp" and second["level"] == "warning"


def test_auto_format_off_a_tty_is_logfmt_with_a_timestamp() -> None:
    out = io.StringIO()
    assert configure_logging("info", "auto", stream=out, env={}) == "logfmt"
    structlog.get_logger("dealsd.x").info("ready", pid=7)
    (line,) = lines(out)
    assert re.fullmatch(r"ts=\S+Z level=info event=ready pid=7 logger=dealsd.x", line)


def test_auto_format_checks_journal_stream_against_the_real_descriptor(tmp_path: Path) -> None:
    with open(tmp_path / "err.log", "w") as f:
        st = os.fstat(f.fileno())
        ours = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert resolve_format("auto", stream=f, env=ours) == "journal"
        # Inherited from a parent whose stderr was the journal: not ours.
        assert resolve_format("auto", stream=f, env={"JOURNAL_STREAM": "1:2"}) == "logfmt"
    primary, secondary = os.openpty()
    with open(secondary, "w") as tty:
        assert resolve_format("auto", stream=tty, env={}) == "console"
    os.close(primary)
    with pytest.raises(ValueError):
        resolve_format("xml", stream=io.StringIO(), env={})


def test_set_level_changes_every_logger_live() -> None:
    out = journal("info")
    stdlib = logging.getLogger("aiohttp.client")
    module_log.debug("d1")
    stdlib.debug("d2")
    set_level("debug")
    module_log.debug("d3")
    stdlib.debug("d4")
    set_level("error")
    module_log.warning("w5")
    module_log.error("e6")
    assert [line.split()[0] for line in lines(out)] == [
        "<7>event=d3",
        "<7>event=d4",
        "<3>event=e6",
    ]
    with pytest.raises(ValueError):
        set_level("verbose")


def test_capture_logs_still_works_after_configuring() -> None:
    journal()
    with structlog.testing.capture_logs() as captured:
        module_log.info("seen", n=1)
    assert captured == [{"event": "seen", "n": 1, "log_level": "info"}]


def test_logfmt_values() -> None:
    assert logfmt({"a": None, "b": "x=y", "c": "back\\slash", "d": "\x00", "e b": 1}) == (
        'a=null b="x=y" c="back\\\\slash" d="\\x00" e_b=1'
    )


async def test_persistent_fault_for_ten_minutes_stays_under_30_lines() -> None:
    clock = FakeClock()
    out = journal()
    failures = FailureLog(clock=clock, summary_every_s=60.0)
    log = structlog.get_logger("dealsd.upserter")
    for _ in range(600):  # one failure per second for ten minutes
        try:
            raise TimeoutError(f"GET /deal?key={SECRET} timed out")
        except TimeoutError as exc:
            failures.log_failure(
                log, "deal_fetch_failed", "keepa:timeout", error=str(exc), exc_info=True
            )
        await clock.advance(1.0)
    assert failures.clear("keepa:timeout")
    got = lines(out)
    assert 10 <= len(got) <= 30
    assert "Traceback" in got[0] and "repeated" not in got[0]
    summaries = got[1:-1]
    assert all("Traceback" not in s and "repeated=" in s for s in summaries)
    counts = [int(re.search(r"repeated=(\d+)", s).group(1)) for s in summaries]  # type: ignore[union-attr]
    # One summary a minute; the 59 after the last are in the recovery's failures=600.
    assert counts == list(range(60, 600, 60))
    assert all("since=2027-01-15T08:00:00Z" in s for s in summaries)
    assert got[-1].startswith("<6>event=deal_fetch_failed fault_key=keepa:timeout recovered=true")
    assert "failures=600" in got[-1] and "lasted_s=600.0" in got[-1]
    assert SECRET not in out.getvalue()


async def test_fault_keys_are_independent_and_a_cleared_fault_is_new_again() -> None:
    clock = FakeClock()
    out = journal()
    failures = FailureLog(clock=clock, summary_every_s=60.0)
    log = structlog.get_logger("dealsd.backfiller")
    assert failures.log_failure(log, "batch_failed", "a", error="x")
    assert failures.log_failure(log, "batch_failed", "b", error="y", level="error")
    assert not failures.log_failure(log, "batch_failed", "a", error="x")
    assert failures.active() == ["a", "b"]
    assert not failures.clear("never-seen")
    # A wall clock stepped back an hour neither floods nor ends the suppression.
    clock.jump_wall(-3600)
    assert not failures.log_failure(log, "batch_failed", "a", error="x")
    await clock.advance(10)
    assert failures.clear("a")
    assert failures.log_failure(log, "batch_failed", "a", error="back")
    got = lines(out)
    assert [line[:3] for line in got] == ["<4>", "<3>", "<6>", "<4>"]
    assert "failures=3" in got[2] and "lasted_s=10.0" in got[2]
    assert "repeated" not in got[3] and "error=back" in got[3]


async def test_failure_log_summary_waits_for_the_interval() -> None:
    clock = FakeClock()
    out = journal()
    failures = FailureLog(clock=clock, summary_every_s=30.0)
    log = structlog.get_logger("w")
    failures.log_failure(log, "e", "k")
    await clock.advance(29.9)
    assert not failures.log_failure(log, "e", "k")
    await asyncio.sleep(0)
    await clock.advance(0.1)
    assert failures.log_failure(log, "e", "k", exc_info=True)
    assert lines(out)[1].startswith("<4>event=e fault_key=k repeated=2 since=")


def test_early_line_carries_the_priority_only_on_the_journal(tmp_path: Path) -> None:
    from dealsd.journal import early_line

    with open(tmp_path / "err.log", "w") as f:
        st = os.fstat(f.fileno())
        ours = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        early_line("dealsd: config error: x", stream=f, env=ours)
        # journald makes each line its own entry: each gets the priority.
        early_line("dealsd: warning: one\nand two", level="warning", stream=f, env=ours)
        early_line("dealsd: config error: inherited", stream=f, env={"JOURNAL_STREAM": "1:2"})
        early_line("dealsd: config error: plain", stream=f, env={})
    assert (tmp_path / "err.log").read_text().splitlines() == [
        "<3>dealsd: config error: x",
        "<4>dealsd: warning: one",
        "<4>and two",
        "dealsd: config error: inherited",
        "dealsd: config error: plain",
    ]
