"""What Keepa requests ask for and cost: the /deal page, the /product parameters."""

from __future__ import annotations

from dataclasses import dataclass, replace

DEAL_COST = 5  # tokens per /deal page
DEAL_PAGE_SIZE = 150  # deals per /deal page; a shorter page is the result's end
MAX_ASINS = 100  # per /product request

OFFERS_COST = 6  # replaces the base token: one page of 10 offers assumed
RATING_COST = 1
BUYBOX_COST = 2


@dataclass(frozen=True, slots=True)
class ProductParams:
    """The /product parameters dealsd uses (defaults: the config's)."""

    history: bool = True
    days: int = 0  # 0 = all history
    stats: int = 180  # days of the stats object; 0 = none
    offers: int = 0  # 0 = none, else 20..100
    only_live_offers: bool = False
    rating: bool = False
    update: int = -1  # -1 never forces a (paid) refresh
    buybox: bool = False

    def __post_init__(self) -> None:
        if self.offers and not 20 <= self.offers <= 100:
            raise ValueError(f"offers must be 0 or 20..100, got {self.offers}")
        if self.days < 0 or self.stats < 0:
            raise ValueError("days and stats must be >= 0")

    def to_query(self) -> dict[str, str]:
        """Query parameters; ``update`` is always sent, since Keepa's default refreshes."""
        query = {"history": "1" if self.history else "0", "update": str(self.update)}
        if self.days:
            query["days"] = str(self.days)
        if self.stats:
            query["stats"] = str(self.stats)
        if self.offers:
            query["offers"] = str(self.offers)
            if self.only_live_offers:
                query["only-live-offers"] = "1"
        if self.rating:
            query["rating"] = "1"
        if self.buybox:
            query["buybox"] = "1"
        return query

    def stats_only(self) -> ProductParams:
        """The lightweight refresh: stats only, no history, offers or rating.

        The buy box stays when it was asked for (+2 a product): without it the
        buy box columns, and a `buy_box` profit reference, could not be refreshed.
        """
        return replace(
            self, history=False, days=0, offers=0, only_live_offers=False, rating=False,
        )


def estimate_product_cost(params: ProductParams, n: int) -> int:
    """Tokens a /product call for ``n`` ASINs should cost, before asking.

    The truth is ``tokensConsumed``: offer pages vary and a forced refresh
    (+1) cannot be known in advance, so it is not counted.
    """
    per_item = OFFERS_COST if params.offers else 1
    if params.rating:
        per_item += RATING_COST
    if params.buybox and not params.offers:  # Keepa ignores buybox with offers
        per_item += BUYBOX_COST
    return per_item * max(0, n)
