"""The snapshot contract: what an older, a partial, a missing or a junk
``daemon.snapshot`` column reads as, and how a previous run's end is told."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dealsd import snapshot
from dealsd.cli import main
from dealsd.clock import SystemClock, iso_utc
from dealsd.snapshot import Snapshot, TokensPart, WriterPart
from dealsd.status import gather
from dealsd.store import Store, liveness

# What a dealsd before the typed snapshot wrote (no phase, watchdog, previous_run).
OLDER = {
    "status": "deals=5 workers=running healthy",
    "causes": [],
    "heartbeat_s": 2.0,
    "tokens": {
        "balance": 120.0, "refill_rate": 20.0, "period_s": 60.0, "consumed_total": 7,
        "consumed_by": {"upserter": 5}, "waiting": {}, "rate_limited": 0,
    },
    "writer": {
        "queue": 0, "commits": 3, "last_commit_at": "2026-11-29T10:00:00Z",
        "busy_since": None, "last_error": None,
    },
}  # fmt: skip


def test_a_written_snapshot_reads_back_the_same() -> None:
    snap = Snapshot(
        status="s", phase="unhealthy", causes=["upserter stalled"], watchdog=True,
        tokens=TokensPart(balance=1.0), writer=WriterPart(queue=2),
    )  # fmt: skip
    assert snapshot.decode(snapshot.encode(snap)) == snap


def test_an_older_snapshot_keeps_its_fields_and_defaults_the_new_ones() -> None:
    snap = snapshot.decode(json.dumps(OLDER))
    assert snap.status == OLDER["status"] and snap.heartbeat_s == 2.0
    assert snap.tokens.refill_rate == 20.0 and snap.tokens.consumed_by == {"upserter": 5}
    assert snap.writer.commits == 3 and snap.writer.last_commit_at == "2026-11-29T10:00:00Z"
    assert snap.phase is None and snap.watchdog is None and snap.previous_run is None


@pytest.mark.parametrize(
    "raw",
    [None, "", b"", 42, "not json", "[1, 2]", '"a string"', "{", "null", '{"tokens": 5}'],
)
def test_a_missing_or_junk_column_reads_as_the_defaults(raw: object) -> None:
    assert snapshot.decode(raw) == Snapshot()


def test_one_bad_field_does_not_hide_the_others() -> None:
    doc = {**OLDER, "causes": ["writer stuck"], "tokens": "junk", "heartbeat_s": "soon"}
    snap = snapshot.decode(json.dumps(doc))
    assert snap.causes == ["writer stuck"] and snap.status == OLDER["status"]
    assert snap.tokens == TokensPart() and snap.heartbeat_s == 5.0


def test_the_previous_run_is_told_from_its_row() -> None:
    assert snapshot.previous_run(None) is None
    last = Snapshot(phase="unhealthy", causes=["upserter stalled"], watchdog=False)
    died = snapshot.previous_run(
        {"started_at": "a", "heartbeat_at": "b", "stopped_at": None, "healthy": 0,
         "snapshot": snapshot.encode(last)}
    )  # fmt: skip
    assert died is not None and died.ended == "died" and died.heartbeat_at == "b"
    assert died.causes == ["upserter stalled"] and died.watchdog is False
    # A row an older dealsd left: the phase comes from its healthy column.
    stopped = snapshot.previous_run(
        {"heartbeat_at": "b", "stopped_at": "b", "healthy": 1, "snapshot": json.dumps(OLDER)}
    )
    assert stopped is not None and stopped.ended == "stopped" and stopped.phase == "healthy"
    assert stopped.watchdog is None


async def _row(db: Path, snapshot_value: Any) -> None:
    store = await Store.open(db, clock=SystemClock())
    now = time.time()
    row = {
        "pid": 424242, "started_at": iso_utc(now - 60), "heartbeat_at": iso_utc(now - 1),
        "stopped_at": iso_utc(now - 1), "healthy": 1, "snapshot": snapshot_value,
    }  # fmt: skip
    await store.write(lambda c: liveness.write_daemon(c, row))
    await store.close()


@pytest.mark.parametrize("value", [None, "}junk{", 7, json.dumps(OLDER)])
async def test_status_reads_any_column_without_a_crash(
    value: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "deals.db"
    await _row(db, value)
    doc = gather(db)
    assert doc["daemon"]["state"] == "stopped" and doc["healthy"] is False
    assert doc["writer"].keys() == {"queue", "commits", "last_commit_at", "busy_since",
                                    "last_error"}  # fmt: skip
    assert main(["status", "--database", str(db)]) == 1
    assert "not running: stopped since" in capsys.readouterr().out
    assert main(["status", "--database", str(db), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["daemon"]["causes"] == []
