"""The one policy every token-spending worker shares (dealsd/workers/base.py).

The upserter and the backfiller meet a refused key the same way, against the
real simulator; a worker written for this test shows what a new worker gets
by writing only its own round.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import structlog
from helpers import StartSim, one_selection

from dealsd.clock import SystemClock, iso_utc
from dealsd.config import BackfillerConfig, ProfitConfig, UpserterConfig
from dealsd.keepa import KeepaClient, TransientError
from dealsd.keepa.payloads import Envelope
from dealsd.simulator import Simulator
from dealsd.store import Store
from dealsd.tokens import TokenScheduler
from dealsd.workers.backfiller import Backfiller
from dealsd.workers.base import ACCESS_DENIED_BACKOFF_S, KeepaWorker, RoundResult
from dealsd.workers.health import Health
from dealsd.workers.health_types import State
from dealsd.workers.upserter import Upserter


@pytest.fixture
async def sim(start_sim: StartSim) -> Simulator:
    """conftest's simulator, answering only one key."""
    return await start_sim(catalogue_size=300, api_keys=frozenset({"the-right-key"}))


@pytest.mark.parametrize("name", ["upserter", "backfiller"])
async def test_a_refused_key_ends_the_round_in_the_one_long_pause(
    sim: Simulator, tmp_path: Path, name: str
) -> None:
    clock = SystemClock()
    tokens = TokenScheduler(clock=clock, weights={name: 1.0}, batch_minutes=1.0)
    store = await Store.open(tmp_path / "deals.db", clock=clock)
    asin = sorted(sim.catalogue.by_asin)[0]
    now = iso_utc(clock.now())

    def seed(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO deals (asin, domain_id, first_seen_at, last_seen_at) VALUES (?, 1, ?, ?)",
            (asin, now, now),
        )

    await store.write(seed)
    health = Health(clock=clock)
    health.register(name, expected_round_s=30)
    try:
        async with KeepaClient(
            base_url=sim.base_url, api_key="a-wrong-key", domain=1, tokens=tokens, clock=clock
        ) as client:
            worker: Upserter | Backfiller
            if name == "upserter":
                worker = Upserter(
                    client=client, tokens=tokens, store=store, clock=clock,
                    selection=one_selection(UpserterConfig()), health=health,
                )  # fmt: skip
            else:
                worker = Backfiller(
                    client=client, tokens=tokens, store=store, clock=clock,
                    config=BackfillerConfig(), price_type=2, profit=ProfitConfig(),
                    health=health,
                )  # fmt: skip
            with structlog.testing.capture_logs() as logs:
                result = await worker.round()
            assert result == RoundResult(sleep_s=ACCESS_DENIED_BACKOFF_S)
            snap = health.snapshot()
            assert any(c.startswith("keepa access denied") for c in snap.causes), snap.causes
            assert snap.worker(name).state is State.BACKING_OFF
            # Said once by the worker (the client logs the HTTP answer itself).
            said = [e for e in logs if e["event"] == f"{name}_access_denied"]
            assert len(said) == 1 and said[0]["log_level"] == "error"
            # Asked once: a refused key is not retried within the round.
            assert sum(sim.stats()["requests"].values()) == 1

            def stored(conn: sqlite3.Connection) -> tuple[int, int, int]:
                row = conn.execute(
                    "SELECT COUNT(*), SUM(backfill_attempts), "
                    "SUM(backfilled_at IS NOT NULL) FROM deals"
                ).fetchone()
                return int(row[0]), int(row[1]), int(row[2])

            # Nothing stored, and the refusal is not held against the deal.
            assert await store.read(stored) == (1, 0, 0)

            # The key accepted again: the next round clears the cause.
            sim.control(api_keys=None)
            result = await worker.round()
            assert result.sleep_s < ACCESS_DENIED_BACKOFF_S
            assert not any("access denied" in c for c in health.snapshot().causes)
            count, _attempts, backfilled = await store.read(stored)
            assert (count > 1) if name == "upserter" else (backfilled == 1)
    finally:
        await store.close()


class Probe(KeepaWorker):
    """A new worker: only its own round, each Keepa call through ``_paid``."""

    name = "probe"

    def __init__(self, *, tokens: TokenScheduler, health: Health, fail: bool = False) -> None:
        super().__init__(tokens=tokens, health=health)
        self.fail = fail
        self.state_during_call: State | None = None

    @property
    def expected_round_s(self) -> float:
        return 10.0

    async def _call(self) -> int:
        self.state_during_call = self._health.snapshot().worker(self.name).state
        if self.fail:
            raise TransientError("connection reset")
        return 7

    async def _round(self) -> RoundResult:
        got = await self._paid(5, self._call())
        return RoundResult(sleep_s=1.0, progressed=got)


def _scheduler(tokens_left: int) -> TokenScheduler:
    clock = SystemClock()
    tokens = TokenScheduler(clock=clock, weights={"probe": 1.0}, batch_minutes=1.0)
    tokens.sync(
        Envelope(
            timestamp=int(clock.now() * 1000),
            tokens_left=tokens_left,
            refill_in=60_000,
            refill_rate=5,
        )
    )
    return tokens


async def test_a_long_token_wait_is_shown_while_the_call_waits() -> None:
    health = Health(clock=SystemClock())
    health.register("probe", expected_round_s=10)
    # 100 tokens in debt at 5 a minute: the call's wait is minutes, not pacing.
    probe = Probe(tokens=_scheduler(-100), health=health)
    assert await probe.round() == RoundResult(sleep_s=1.0, progressed=7)
    assert probe.state_during_call is State.WAITING_FOR_TOKENS
    assert health.snapshot().worker("probe").state is State.RUNNING


async def test_plenty_of_tokens_is_not_shown_as_a_wait() -> None:
    health = Health(clock=SystemClock())
    health.register("probe", expected_round_s=10)
    probe = Probe(tokens=_scheduler(250), health=health)
    await probe.round()
    assert probe.state_during_call is not None
    assert probe.state_during_call is not State.WAITING_FOR_TOKENS


async def test_other_errors_are_the_workers_own_and_leave_access_alone() -> None:
    health = Health(clock=SystemClock())
    health.register("probe", expected_round_s=10)
    probe = Probe(tokens=_scheduler(250), health=health, fail=True)
    # A network error is not a refused key: it leaves the round to the
    # worker's (here: the supervisor's) own handling, not the 600 s pause.
    with pytest.raises(TransientError):
        await probe.round()
    assert not any("access denied" in c for c in health.snapshot().causes)
