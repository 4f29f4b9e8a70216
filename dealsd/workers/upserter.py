"""The upserter: pages Keepa's /deal for one selection into `deals`.

One Upserter runs per selection (``dealsd.selections``), with its own name
(worker, token consumer, ledger), marketplace, checkpoints and schedule; every
log line names the selection and its domain.

One round is one pass over the selection's result, from page 0 until

- a page reaches deals not newer than the watermark (the newest
  ``lastUpdate`` a finished pass saw). This only means something when the
  selection sorts newest first (``sortType`` 1); otherwise every round pages
  the whole result;
- a short page (fewer than 150 deals: the end of the result);
- or ``max_pages_per_run``.

Each page is ONE write: the deals upserted, the page cursor (and, at the end
of a pass, the watermark) advanced in the same transaction. A restart in the
middle of a pass therefore resumes at the next page instead of paying again
for the pages already stored (docs/field-notes.md #10). Checkpoint names carry a
hash of the selection, so a changed selection starts afresh instead of
trusting a watermark that belongs to another query; a selection removed and
added again finds its checkpoints (the janitor drops them only after a week
unwritten).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

import structlog

from dealsd import estimate, mapping
from dealsd.clock import Clock, iso_utc
from dealsd.keepa import DEAL_COST, DEAL_PAGE_SIZE, KeepaClient
from dealsd.selections import Pricing, Selection
from dealsd.selections import price_type as price_type
from dealsd.selections import selection_key as selection_key
from dealsd.store import Store, queries
from dealsd.tokens import TokenScheduler
from dealsd.workers.base import DealsChanged, KeepaWorker, RoundResult
from dealsd.workers.health import Health

log = structlog.get_logger(__name__)

# A pass cut short by max_pages_per_run goes on after this pause, not a whole
# interval later: a first fill should not take hours longer than its tokens.
CONTINUE_PASS_S = 1.0


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

    def _names(self) -> tuple[str, str]:
        key = self._sel.key
        return f"upserter.{key}.cursor", f"upserter.{key}.watermark"

    async def _round(self) -> RoundResult:
        cfg = self._sel
        domain = cfg.domain
        selection = dict(cfg.query)
        cursor_name, watermark_name = self._names()
        saved = await self._store.read(queries.get_checkpoints)
        watermark = int(saved[watermark_name]) if watermark_name in saved else None
        cursor = json.loads(saved[cursor_name]) if cursor_name in saved else {}
        page = cursor.get("page")
        if page is None:  # no pass in progress: start one
            page, pass_max = 0, watermark if watermark is not None else -1
        else:
            pass_max = int(cursor.get("max", -1))
        newest_first = selection.get("sortType") == 1
        stop_at = watermark if newest_first else None
        pages = 0
        finished = False
        while pages < cfg.max_pages_per_run:
            if self._stop is not None and self._stop.is_set():
                break
            result = await self._paid(
                DEAL_COST, self._client.deals(selection, page, consumer=self.name, domain=domain)
            )
            seen_at = iso_utc(self._clock.now())
            deals = [item.value for item in result.items]
            rows = [
                mapping.deal_row(item.value, item.raw, domain_id=domain, seen_at=seen_at)
                for item in result.items
            ]
            if deals:
                pass_max = max(pass_max, max(d.last_update for d in deals))
            reached = stop_at is not None and any(d.last_update <= stop_at for d in deals)
            short = len(result.items) + len(result.skipped) < DEAL_PAGE_SIZE
            finished = reached or short
            checkpoints = {
                cursor_name: json.dumps(
                    {"page": None} if finished else {"page": page + 1, "max": pass_max}
                ),
            }
            if finished and pass_max >= 0:
                checkpoints[watermark_name] = str(pass_max)
            tokens_spent = result.envelope.tokens_consumed if result.envelope else 0
            counts = await self._store.write(
                self._page_writer(rows, checkpoints, seen_at, tokens_spent)
            )
            pages += 1
            self._health.progress(self.name, 1, "pages")
            if pass_max >= 0:
                self.newest_update = pass_max
            self._log.debug(
                "deal_page_stored",
                page=page,
                deals=len(rows),
                new=counts.new,
                skipped=len(result.skipped),
                tokens=tokens_spent,
            )
            if finished:
                break
            page += 1
        if finished:
            self.last_pass_at = self._clock.now()
        if pages:
            self._log.info("upserter_round", pages=pages, finished=finished)
        sleep = float(cfg.interval_s) if finished or pages == 0 else CONTINUE_PASS_S
        return RoundResult(sleep_s=sleep)

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
                    matched = queries.selections_of(conn, sel.domain, existing["asin"])
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

            counts = queries.upsert_deals(
                conn, rows, checkpoints=checkpoints, now=now, recompute=recompute,
                selection=sel.name,
            )  # fmt: skip
            queries.record_tokens(
                conn, at=now, consumer=self.name, endpoint="deal", items=1, tokens=tokens_spent
            )
            if on_change is not None:
                on_change(conn, list(by_asin), now)
            return counts

        return write
