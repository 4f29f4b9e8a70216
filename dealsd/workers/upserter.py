"""The upserter: pages Keepa's /deal for the configured selection into `deals`.

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
trusting a watermark that belongs to another query.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

import structlog

from dealsd import estimate, mapping
from dealsd.clock import Clock, iso_utc
from dealsd.config import UpserterConfig
from dealsd.keepa import DEAL_COST, DEAL_PAGE_SIZE, KeepaClient
from dealsd.store import Store, queries
from dealsd.tokens import TokenScheduler
from dealsd.workers.base import DealsChanged, KeepaWorker, RoundResult
from dealsd.workers.health import Health

log = structlog.get_logger(__name__)

# A pass cut short by max_pages_per_run goes on after this pause, not a whole
# interval later: a first fill should not take hours longer than its tokens.
CONTINUE_PASS_S = 1.0


def selection_key(selection: Mapping[str, Any], domain: int) -> str:
    """A short stable hash of what is asked of Keepa: the checkpoints' namespace."""
    canonical = json.dumps({"domain": domain, "selection": selection}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def price_type(selection: Mapping[str, Any]) -> int:
    """The selection's one price type (Keepa insists on exactly one)."""
    types = selection.get("priceTypes") or [2]
    return int(types[0])


class Upserter(KeepaWorker):
    name = "upserter"

    def __init__(
        self,
        *,
        client: KeepaClient,
        tokens: TokenScheduler,
        store: Store,
        clock: Clock,
        config: UpserterConfig,
        domain: int,
        profit: estimate.ProfitSettings,
        health: Health,
        stop: asyncio.Event | None = None,
        on_change: DealsChanged | None = None,
    ) -> None:
        super().__init__(tokens=tokens, health=health)
        self._client = client
        self._on_change = on_change
        self._store = store
        self._clock = clock
        self._cfg = config
        self._domain = domain
        self._profit = profit
        self._stop = stop

    @property
    def expected_round_s(self) -> float:
        return float(self._cfg.interval_s)

    def reconfigure(self, *, config: UpserterConfig, profit: estimate.ProfitSettings) -> None:
        """Live changes (SIGHUP): take effect from the next page."""
        self._cfg = config
        self._profit = profit

    def _names(self) -> tuple[str, str]:
        key = selection_key(self._cfg.selection, self._domain)
        return f"upserter.{key}.cursor", f"upserter.{key}.watermark"

    async def _round(self) -> RoundResult:
        cfg = self._cfg
        selection = dict(cfg.selection)
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
        ptype = price_type(selection)
        pages = 0
        finished = False
        while pages < cfg.max_pages_per_run:
            if self._stop is not None and self._stop.is_set():
                break
            result = await self._paid(
                DEAL_COST, self._client.deals(selection, page, consumer=self.name)
            )
            seen_at = iso_utc(self._clock.now())
            deals = [item.value for item in result.items]
            rows = [
                mapping.deal_row(item.value, item.raw, domain_id=self._domain, seen_at=seen_at)
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
                self._page_writer(rows, checkpoints, seen_at, ptype, tokens_spent)
            )
            pages += 1
            self._health.progress(self.name, 1, "pages")
            log.debug(
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
        if pages:
            log.info("upserter_round", pages=pages, finished=finished)
        sleep = float(cfg.interval_s) if finished or pages == 0 else CONTINUE_PASS_S
        return RoundResult(sleep_s=sleep)

    def _page_writer(
        self,
        rows: list[dict[str, object]],
        checkpoints: dict[str, str],
        now: str,
        ptype: int,
        tokens_spent: int,
    ) -> Any:
        by_asin = {str(r["asin"]): r for r in rows}
        profit = self._profit
        on_change = self._on_change

        def recompute(existing: sqlite3.Row) -> Mapping[str, object]:
            # A deal already backfilled has its averages: the new current price
            # changes what buying it costs, so profit and margin follow now.
            current: Mapping[str, object] = by_asin.get(existing["asin"]) or {
                k: existing[k] for k in existing.keys()
            }
            columns = {k: existing[k] for k in existing.keys()}
            return estimate.estimate(
                columns,
                buy_cost_cents=estimate.buy_cost_cents(current, ptype),
                price_type=ptype,
                profit=profit,
            )

        def write(conn: sqlite3.Connection) -> object:
            counts = queries.upsert_deals(
                conn, rows, checkpoints=checkpoints, now=now, recompute=recompute
            )
            queries.record_tokens(
                conn, at=now, consumer=self.name, endpoint="deal", items=1, tokens=tokens_spent
            )
            if on_change is not None:
                on_change(conn, list(by_asin), now)
            return counts

        return write
