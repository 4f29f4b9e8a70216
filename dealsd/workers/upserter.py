"""The upserter: pages Keepa's /deal for one selection into `deals`.

One Upserter runs per selection (``dealsd.selections``), with its own name
(worker, token consumer, ledger), marketplace, checkpoints and schedule; every
log line names the selection and its domain.

Freshness must not grow with the result: a selection in another order
(``sortType`` 4, biggest drop first) puts a new deal on any page, and walking
10,000 results (67 pages, 335 tokens) every round is what made a new deal
wait over an hour on a small plan. So a round has two kinds of pass:

- the **fresh** pass, every ``interval_s``: the same filters asked newest
  first (``sortType`` 1, "deal age"), from page 0 until the first deal older
  than the watermark (usually page 0 alone). The watermark is the newest
  ``creationDate`` a finished fresh pass saw: Keepa's newest-first list is
  ordered by when deals were found (README, "Which field orders the newest
  deals"), so a deal found long ago and updated a minute ago sits far down it.
  The pass stops at the first deal whose ``creationDate`` AND ``lastUpdate``
  are both older than the watermark; every deal after it was found earlier
  under either reading of "deal age" (``creationDate <= lastUpdate``), so a
  new deal behind an old, just-updated one is never missed;
- the **full** pass, every ``full_pass_h``: the whole result in the user's own
  order, for the price changes of known deals and their ``last_seen_at``
  (deals that left the selection age out). It is paused whenever a fresh
  pass is due, and resumes at its page.

``full_pass_h = 0`` is the old behaviour: every round is a full pass (with
``sortType`` 1 the fresh pass itself is one).

Each page is ONE write: the deals upserted (with their screen, the estimate
made from the deal object alone), the page cursor (and, at the end of a pass,
the watermark) advanced in the same transaction. A restart in the middle of a
pass therefore resumes at the next page instead of paying again for the
pages already stored (docs/field-notes.md #10). Checkpoint names carry a
hash of the selection, so a changed selection starts afresh instead of
trusting a watermark that belongs to another query; a selection removed and
added again finds its checkpoints (the janitor drops them only after a week
unwritten). When a page brings new
deals, ``work_arrived`` is set: a backfiller waiting for work starts at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from dealsd import estimate, mapping
from dealsd.clock import Clock, iso_utc
from dealsd.keepa import DEAL_COST, DEAL_PAGE_SIZE, KeepaClient
from dealsd.keepa.payloads import Deal
from dealsd.selections import Pricing, Selection
from dealsd.selections import price_type as price_type
from dealsd.selections import selection_key as selection_key
from dealsd.store import Store, feed
from dealsd.tokens import TokenScheduler
from dealsd.workers.base import DealsChanged, KeepaWorker, RoundResult
from dealsd.workers.health import Health

log = structlog.get_logger(__name__)

# A pass cut short by max_pages_per_run goes on after this pause, not a whole
# interval later: a first fill should not take hours longer than its tokens.
CONTINUE_PASS_S = 1.0
NEWEST_FIRST = 1  # Keepa's sortType "deal age, newest deals first"


def deal_age(deal: Deal) -> int:
    """The time Keepa's newest-first list is ordered by: when the deal was found."""
    return deal.creation_date if deal.creation_date is not None else deal.last_update


@dataclass(slots=True)
class _Pass:
    """One walk over a result: which selection, where it is, what it saw."""

    selection: dict[str, Any]
    fresh: bool  # newest first: stops at the watermark and moves it
    cursor_name: str | None  # None: always starts at page 0 and ends at its budget
    page: int = 0
    stop_before: int | None = None  # the watermark: stop at the first deal older than it
    newest: int = -1  # the newest deal age seen so far in this pass
    finished: bool = False


class Upserter(KeepaWorker):
    def __init__(
        self,
        *,
        client: KeepaClient,
        tokens: TokenScheduler,
        store: Store,
        clock: Clock,
        selection: Selection,
        health: Health,
        pricing: Pricing | None = None,
        stop: asyncio.Event | None = None,
        on_change: DealsChanged | None = None,
        work_arrived: asyncio.Event | None = None,
    ) -> None:
        super().__init__(tokens=tokens, health=health)
        self._client = client
        self._on_change = on_change
        self._store = store
        self._clock = clock
        self._pricing = pricing
        self._stop = stop
        self.reconfigure(selection=selection)
        # For `dealsd status`: when the last pass finished, and the newest
        # Keepa update (Keepa minutes) it saw: the selection's freshness.
        self.last_pass_at: float | None = None
        self.newest_update: int | None = None
        self._work_arrived = work_arrived
        self._fresh_due_at = -math.inf  # monotonic: the first round polls at once
        self.fresh_pages = 0
        self.full_pages = 0
        self.full_pass_tokens: int | None = None  # what the last whole walk cost

    @property
    def expected_round_s(self) -> float:
        return float(self._sel.interval_s)

    @property
    def selection(self) -> Selection:
        return self._sel

    def reconfigure(self, *, selection: Selection) -> None:
        """Live changes (SIGHUP): take effect from the next page.

        The name stays (it is the worker's); a changed query or domain moves
        to other checkpoint names by itself.
        """
        self._sel = selection
        self.name = selection.worker
        self._log = log.bind(selection=selection.name, domain=selection.domain)

    def _names(self) -> tuple[str, str, str]:
        base = f"upserter.{self._sel.key}"
        return f"{base}.cursor", f"{base}.watermark", f"{base}.full_pass_at"

    async def _round(self) -> RoundResult:
        cfg = self._sel
        cursor_name, watermark_name, full_name = self._names()
        saved = await self._store.read(feed.get_checkpoints)
        watermark = int(saved[watermark_name]) if watermark_name in saved else None
        cursor = json.loads(saved[cursor_name]) if cursor_name in saved else {}
        user = dict(cfg.query)
        if cfg.full_pass_h <= 0:
            # Every round is a pass in the user's order (before the funnel).
            walk = self._walk_of(user, cursor, cursor_name)
            if user.get("sortType") == NEWEST_FIRST:
                walk.fresh, walk.stop_before = True, watermark
            pages = await self._run(walk, watermark_name, full_name, budget=cfg.max_pages_per_run)
            sleep = float(cfg.interval_s) if walk.finished or pages == 0 else CONTINUE_PASS_S
            return RoundResult(sleep_s=sleep)
        budget = cfg.max_pages_per_run
        mono = self._clock.monotonic()
        if mono >= self._fresh_due_at:
            fresh = _Pass({**user, "sortType": NEWEST_FIRST}, True, None, stop_before=watermark)
            # A first poll only learns the watermark: the full pass fills the rest.
            bought = await self._run(
                fresh, watermark_name, full_name, budget=budget if watermark is not None else 1
            )
            self._fresh_due_at = mono + cfg.interval_s
            budget = max(1, budget - bought)
        walking = cursor.get("page") is not None
        last_full = float(saved[full_name]) if full_name in saved else None
        due = last_full is None or self._clock.now() - last_full >= cfg.full_pass_h * 3600.0
        if budget and (walking or due):
            walk = self._walk_of(user, cursor, cursor_name)
            await self._run(walk, watermark_name, full_name, budget=budget, pausable=True)
            walking = not walk.finished
        until_fresh = max(0.0, self._fresh_due_at - self._clock.monotonic())
        return RoundResult(sleep_s=min(CONTINUE_PASS_S, until_fresh) if walking else until_fresh)

    def _walk_of(self, selection: dict[str, Any], cursor: Mapping[str, Any], name: str) -> _Pass:
        """The full pass in the user's order, resumed at its cursor."""
        page = cursor.get("page")
        if page is None:
            return _Pass(selection, False, name)
        return _Pass(selection, False, name, int(page), newest=int(cursor.get("max", -1)))

    async def _run(
        self,
        walk: _Pass,
        watermark_name: str,
        full_name: str,
        *,
        budget: int,
        pausable: bool = False,
    ) -> int:
        """Page ``walk`` until it ends, ``budget`` pages, a stop, or (``pausable``) a fresh
        pass falls due; returns the pages bought."""
        ptype = self._sel.price_type  # the sortType of a fresh pass changes no price type
        domain = self._sel.domain
        pages = 0
        while pages < budget and not walk.finished:
            if self._stop is not None and self._stop.is_set():
                break
            if pausable and pages and self._clock.monotonic() >= self._fresh_due_at:
                break  # freshness first: the walk resumes at its cursor
            result = await self._paid(
                DEAL_COST,
                self._client.deals(walk.selection, walk.page, consumer=self.name, domain=domain),
            )
            seen_at = iso_utc(self._clock.now())
            deals = [item.value for item in result.items]
            rows = [self._row(item.value, item.raw, seen_at, ptype) for item in result.items]
            if deals:
                walk.newest = max(walk.newest, max(deal_age(d) for d in deals))
                newest = max(d.last_update for d in deals)
                self.newest_update = max(self.newest_update or -1, newest)
            stop = walk.stop_before
            reached = stop is not None and any(
                max(deal_age(d), d.last_update) < stop for d in deals
            )
            short = len(result.items) + len(result.skipped) < DEAL_PAGE_SIZE
            # A fresh pass cut at its budget still moves the watermark: what it
            # did not reach is older than what it saw, and the full pass has it.
            walk.finished = reached or short or (walk.cursor_name is None and pages + 1 >= budget)
            checkpoints = self._checkpoints(walk, watermark_name, full_name)
            tokens_spent = result.envelope.tokens_consumed if result.envelope else 0
            counts = await self._store.write(
                self._page_writer(rows, checkpoints, seen_at, tokens_spent)
            )
            pages += 1
            if walk.fresh:
                self.fresh_pages += 1
            else:
                self.full_pages += 1
            if counts.new and self._work_arrived is not None:
                self._work_arrived.set()
            self._health.progress(self.name, 1, "pages")
            self._log.debug(
                "deal_page_stored",
                page=walk.page,
                pass_="fresh" if walk.fresh else "full",
                deals=len(rows),
                new=counts.new,
                skipped=len(result.skipped),
                tokens=tokens_spent,
            )
            if walk.finished:
                self.last_pass_at = self._clock.now()
                if not walk.fresh:
                    self.full_pass_tokens = (walk.page + 1) * DEAL_COST
            walk.page += 1
        if pages:
            self._log.info(
                "upserter_round",
                pages=pages,
                pass_="fresh" if walk.fresh else "full",
                finished=walk.finished,
            )
        return pages

    def _checkpoints(self, walk: _Pass, watermark_name: str, full_name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        if walk.cursor_name is not None:
            out[walk.cursor_name] = json.dumps(
                {"page": None} if walk.finished else {"page": walk.page + 1, "max": walk.newest}
            )
        if walk.finished and walk.fresh and walk.newest >= 0:
            # Never backwards: a pass that saw only older deals keeps the mark.
            out[watermark_name] = str(max(walk.newest, walk.stop_before or -1))
        elif walk.finished and not walk.fresh:
            out[full_name] = f"{self._clock.now():.3f}"
        return out

    def _row(self, deal: Deal, raw: bytes, seen_at: str, ptype: int) -> dict[str, object]:
        return mapping.deal_row(
            deal,
            raw,
            domain_id=self._sel.domain,
            seen_at=seen_at,
            price_type=ptype,
            profit=self._sel.profit,
        )

    def _page_writer(
        self,
        rows: list[dict[str, object]],
        checkpoints: dict[str, str],
        now: str,
        tokens_spent: int,
    ) -> Any:
        by_asin = {str(r["asin"]): r for r in rows}
        sel, pricing = self._sel, self._pricing
        on_change = self._on_change

        def write(conn: sqlite3.Connection) -> object:
            def recompute(existing: sqlite3.Row) -> Mapping[str, object]:
                # A deal already backfilled has its averages: the new current price
                # changes what buying it costs, so profit and margin follow now,
                # by the settings of the selection that settles its estimate.
                settle = sel
                if pricing is not None and len(pricing.names()) > 1:
                    matched = feed.selections_of(conn, sel.domain, existing["asin"])
                    settle = pricing.choose(sel.domain, [*matched, sel.name])
                current: Mapping[str, object] = by_asin.get(existing["asin"]) or {
                    k: existing[k] for k in existing.keys()
                }
                columns = {k: existing[k] for k in existing.keys()}
                return estimate.estimate(
                    columns,
                    buy_cost_cents=estimate.buy_cost_cents(current, settle.price_type),
                    price_type=settle.price_type,
                    profit=settle.profit,
                )

            counts = feed.upsert_deals(
                conn, rows, checkpoints=checkpoints, now=now, recompute=recompute,
                selection=sel.name,
            )  # fmt: skip
            feed.record_tokens(
                conn, at=now, consumer=self.name, endpoint="deal", items=1, tokens=tokens_spent
            )
            if on_change is not None:
                on_change(conn, list(by_asin), now, sel.domain)
            return counts

        return write
