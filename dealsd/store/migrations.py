"""The released migrations: each step's DDL, exactly as it shipped.

``MIGRATIONS[i]`` takes a database from ``PRAGMA user_version`` i to i+1;
``dealsd.store.schema`` applies them (``apply_migrations``, one transaction)
and takes the schema version from their count. A step is never edited once
released, since a file already past it would never run the new text: a
change is a new entry at the end (and a line in docs/schema.md's versions).

Every query the daemon and ``dealsd status`` run has an index (see
``tests/test_queries.py``, which checks each query plan), because a deals
table of 100k rows scanned every few seconds by ``status`` would cost more
than the ingestion itself: a new query's index is a new step here too.
"""

from __future__ import annotations

# The deals columns of v1 after the key, and the deals indexes: v2 rebuilds
# the table with the same columns and indexes, so the text is written once.
_DEALS_V1_COLUMNS = """
    domain_id             INTEGER NOT NULL,
    title                 TEXT,
    image_url             TEXT,
    root_category         INTEGER,
    current_amazon_cents  INTEGER,
    current_new_cents     INTEGER,
    current_used_cents    INTEGER,
    current_sales_rank    INTEGER,
    keepa_last_update     TEXT,
    first_seen_at         TEXT NOT NULL,
    last_seen_at          TEXT NOT NULL,
    backfilled_at         TEXT,
    refreshed_at          TEXT,
    deal_json             TEXT,
    avg30_new_cents       INTEGER,
    avg90_new_cents       INTEGER,
    avg180_new_cents      INTEGER,
    avg365_new_cents      INTEGER,
    avg30_used_cents      INTEGER,
    avg90_used_cents      INTEGER,
    avg180_used_cents     INTEGER,
    avg365_used_cents     INTEGER,
    avg90_amazon_cents    INTEGER,
    avg90_buy_box_cents   INTEGER,
    avg90_sales_rank      INTEGER,
    sales_rank_drops_30   INTEGER,
    sales_rank_drops_90   INTEGER,
    sales_rank_drops_180  INTEGER,
    sales_rank_drops_365  INTEGER,
    offer_count_new       INTEGER,
    offer_count_used      INTEGER,
    buy_box_cents         INTEGER,
    fba_fee_cents         INTEGER,
    referral_fee_pct      REAL,
    expected_sale_cents   INTEGER,
    profit_cents          INTEGER,
    margin_pct            REAL,
    backfill_attempts     INTEGER NOT NULL DEFAULT 0,
    backfill_retry_at     TEXT,
    backfill_error        TEXT
"""

_DEALS_INDEXES = """
-- The backfill queue, newest first: only never-backfilled rows are in it,
-- and attempts/retry_at ride along so the filter needs no table lookup.
CREATE INDEX deals_pending_backfill
    ON deals (keepa_last_update DESC, backfill_attempts, backfill_retry_at)
    WHERE backfilled_at IS NULL;
-- Refresh order (oldest data first) and the "backfilled" count.
CREATE INDEX deals_refresh_due
    ON deals (COALESCE(refreshed_at, backfilled_at))
    WHERE backfilled_at IS NOT NULL;
-- The janitor's "not seen for grace_h".
CREATE INDEX deals_last_seen_at ON deals (last_seen_at);
-- "Added in the last hour/day".
CREATE INDEX deals_first_seen_at ON deals (first_seen_at);
-- "Newest deal" (max) and dashboards sorting by freshness.
CREATE INDEX deals_keepa_last_update ON deals (keepa_last_update);
"""

_V1 = f"""
CREATE TABLE deals (
    asin                  TEXT PRIMARY KEY,{_DEALS_V1_COLUMNS});

{_DEALS_INDEXES}
CREATE TABLE product_history (
    asin              TEXT PRIMARY KEY REFERENCES deals (asin) ON DELETE CASCADE,
    fetched_at        TEXT,
    keepa_last_update TEXT,
    tokens_spent      INTEGER,
    payload           BLOB
);

CREATE TABLE checkpoints (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE workers (
    name             TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    detail           TEXT,
    last_progress_at TEXT,
    progress_total   INTEGER NOT NULL DEFAULT 0,
    restarts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_error_at    TEXT,
    updated_at       TEXT NOT NULL
);

CREATE TABLE daemon (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    pid          INTEGER,
    started_at   TEXT,
    heartbeat_at TEXT,
    stopped_at   TEXT,
    healthy      INTEGER,
    snapshot     TEXT
);

CREATE TABLE token_ledger (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    consumer TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    items    INTEGER NOT NULL,
    tokens   INTEGER NOT NULL
);
CREATE INDEX token_ledger_at ON token_ledger (at);
"""

# Every v1 deals column, for the copy into v2 (which has them all, and more).
_V1_DEAL_NAMES = ", ".join(
    ["asin", *(line.split()[0] for line in _DEALS_V1_COLUMNS.strip().splitlines())]
)

_V2 = f"""
-- v2: the key is (domain_id, asin): the same ASIN is another offer in another
-- marketplace. SQLite cannot change a primary key in place, so both tables
-- are rebuilt and copied, child first out and parent first in, inside the
-- one migration transaction (apply_migrations); no DROP ever cascades,
-- because the old history table is dropped before the old deals table.
CREATE TABLE deals_v2 (
    asin                  TEXT NOT NULL,{_DEALS_V1_COLUMNS},
    -- schema v2: prices by condition, shipping included (stats current / avg90)
    current_used_like_new_shipping_cents   INTEGER,
    avg90_used_like_new_shipping_cents     INTEGER,
    current_used_very_good_shipping_cents  INTEGER,
    avg90_used_very_good_shipping_cents    INTEGER,
    current_used_good_shipping_cents       INTEGER,
    avg90_used_good_shipping_cents         INTEGER,
    current_used_acceptable_shipping_cents INTEGER,
    avg90_used_acceptable_shipping_cents   INTEGER,
    current_used_buy_box_shipping_cents    INTEGER,
    avg90_used_buy_box_shipping_cents      INTEGER,
    current_new_fbm_shipping_cents         INTEGER,
    avg90_new_fbm_shipping_cents           INTEGER,
    current_used_shipping_cents            INTEGER,
    current_new_shipping_cents             INTEGER,
    buy_box_shipping_cents                 INTEGER,
    -- sales speed
    monthly_sold                           INTEGER,
    avg30_sales_rank                       INTEGER,
    avg180_sales_rank                      INTEGER,
    est_sales_per_month                    INTEGER,
    -- competition
    offer_count_new_fba                    INTEGER,
    offer_count_new_fbm                    INTEGER,
    avg90_offer_count_used                 INTEGER,
    amazon_oos_pct_90                      INTEGER,
    amazon_offering                        INTEGER,
    -- product facts
    package_weight_g                       INTEGER,
    binding                                TEXT,
    publication_date                       TEXT,
    release_date                           TEXT,
    -- the estimate's new parts
    buy_price_cents                        INTEGER,
    all_in_cost_cents                      INTEGER,
    fees_cents                             INTEGER,
    roi_pct                                REAL,
    -- fields of the product Keepa sent that could not be read (NULL: all read)
    unreadable_fields                      TEXT,
    PRIMARY KEY (domain_id, asin)
);
INSERT INTO deals_v2 ({_V1_DEAL_NAMES})
SELECT {_V1_DEAL_NAMES} FROM deals;
CREATE TABLE product_history_v2 (
    domain_id         INTEGER NOT NULL,
    asin              TEXT NOT NULL,
    fetched_at        TEXT,
    keepa_last_update TEXT,
    tokens_spent      INTEGER,
    payload           BLOB,
    PRIMARY KEY (domain_id, asin),
    FOREIGN KEY (domain_id, asin) REFERENCES deals_v2 (domain_id, asin) ON DELETE CASCADE
);
INSERT INTO product_history_v2 (domain_id, asin, fetched_at, keepa_last_update, tokens_spent,
                                payload)
    SELECT d.domain_id, h.asin, h.fetched_at, h.keepa_last_update, h.tokens_spent, h.payload
    FROM product_history AS h JOIN deals AS d ON d.asin = h.asin;
DROP TABLE product_history;
DROP TABLE deals;
-- RENAME also rewrites product_history_v2's REFERENCES to the new name.
ALTER TABLE deals_v2 RENAME TO deals;
ALTER TABLE product_history_v2 RENAME TO product_history;

{_DEALS_INDEXES}-- Every daemon statement and most dashboard queries name the ASIN alone.
CREATE INDEX deals_asin ON deals (asin);
CREATE INDEX product_history_asin ON product_history (asin);
-- The status count of products with unreadable fields.
CREATE INDEX deals_unreadable ON deals (unreadable_fields) WHERE unreadable_fields IS NOT NULL;
"""


# Alerts (dealsd/alerts/outbox.py): what each rule last said of each deal,
# the outbox of messages to send, and each channel's delivery health.
_ALERTS = """
CREATE TABLE alert_state (
    rule              TEXT NOT NULL,
    domain_id         INTEGER NOT NULL,
    asin              TEXT NOT NULL,
    matching          INTEGER NOT NULL,
    alerted_buy_cents INTEGER,
    alerted_at        TEXT,
    PRIMARY KEY (rule, domain_id, asin)
);

CREATE TABLE alert_outbox (
    id          INTEGER PRIMARY KEY,
    created_at  TEXT NOT NULL,
    rule        TEXT NOT NULL,
    channel     TEXT NOT NULL,
    domain_id   INTEGER NOT NULL,
    asin        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    facts       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try_at TEXT NOT NULL,
    sent_at     TEXT,
    last_error  TEXT
);
-- The sender's "what is due" and `status`'s queued count.
CREATE INDEX alert_outbox_unsent ON alert_outbox (next_try_at) WHERE sent_at IS NULL;
-- Pruning what was sent long ago.
CREATE INDEX alert_outbox_sent_at ON alert_outbox (sent_at) WHERE sent_at IS NOT NULL;

CREATE TABLE alert_channels (
    name            TEXT PRIMARY KEY,
    last_success_at TEXT,
    last_error      TEXT,
    last_error_at   TEXT,
    failing_since   TEXT,
    sent_total      INTEGER NOT NULL DEFAULT 0
);
"""

_SELECTIONS = """
-- v5: several selections and marketplaces on one key (issue 16).
-- Money stays an integer in the marketplace's smallest currency unit, as
-- Keepa sends it (cents; whole yen for JPY, which has no minor unit); the
-- currency code names it. The CASE is Keepa's domain ids as of this version.
ALTER TABLE deals ADD COLUMN currency TEXT;
UPDATE deals SET currency = CASE domain_id
    WHEN 1 THEN 'USD' WHEN 2 THEN 'GBP' WHEN 3 THEN 'EUR' WHEN 4 THEN 'EUR'
    WHEN 5 THEN 'JPY' WHEN 6 THEN 'CAD' WHEN 8 THEN 'EUR' WHEN 9 THEN 'EUR'
    WHEN 10 THEN 'INR' WHEN 11 THEN 'MXN' WHEN 12 THEN 'BRL' END;
-- Which selections matched a deal, and when each last saw it: a deal matched
-- by several selections of its marketplace is one deals row. deals.last_seen_at
-- stays the latest of them, so the janitor's grace on deals prunes exactly
-- what no selection has seen; its rows here age out on the same grace.
CREATE TABLE deal_selections (
    domain_id     INTEGER NOT NULL,
    asin          TEXT NOT NULL,
    selection     TEXT NOT NULL,
    first_seen_at TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    PRIMARY KEY (domain_id, asin, selection),
    FOREIGN KEY (domain_id, asin) REFERENCES deals (domain_id, asin) ON DELETE CASCADE
) WITHOUT ROWID;
-- Per-selection counts and the janitor's grace.
CREATE INDEX deal_selections_selection ON deal_selections (selection, last_seen_at);
CREATE INDEX deal_selections_last_seen_at ON deal_selections (last_seen_at);
-- A database of the one-selection era: every deal is the "default" selection's.
INSERT INTO deal_selections (domain_id, asin, selection, first_seen_at, last_seen_at)
    SELECT domain_id, asin, 'default', first_seen_at, last_seen_at FROM deals;
"""

# The deals view's orders (`dealsd deals`, the web view's canned queries):
# best profit and best ROI first without sorting the whole table.
_RANKING = """
CREATE INDEX deals_profit ON deals (profit_cents DESC, asin, domain_id);
CREATE INDEX deals_roi ON deals (roi_pct DESC, asin, domain_id);
"""

_FUNNEL = """
-- v6 (issue 14): the funnel. The screen is the all-in estimate made from the
-- deal object alone (its current[] and 90-day avg[]), before any token is spent.
ALTER TABLE deals ADD COLUMN screen_profit_cents INTEGER;
ALTER TABLE deals ADD COLUMN screen_roi_pct REAL;
-- The second tier: when the candidate's offers / buy box were bought (NULL: never).
ALTER TABLE deals ADD COLUMN detailed_at TEXT;
-- The ledger says which stage a product request was: backfill, refresh, detail.
ALTER TABLE token_ledger ADD COLUMN kind TEXT;
-- The backfill queue, best screen first (NULL, no screen, last).
CREATE INDEX deals_backfill_by_screen
    ON deals (screen_profit_cents DESC, backfill_attempts, backfill_retry_at)
    WHERE backfilled_at IS NULL;
-- The funnel's counts by the screen, and the second tier's candidates.
CREATE INDEX deals_screen ON deals (screen_profit_cents, screen_roi_pct);
CREATE INDEX deals_profitable ON deals (profit_cents, roi_pct) WHERE backfilled_at IS NOT NULL;
CREATE INDEX deals_detail_due ON deals (profit_cents DESC)
    WHERE backfilled_at IS NOT NULL AND detailed_at IS NULL;
CREATE INDEX deals_detailed ON deals (detailed_at) WHERE detailed_at IS NOT NULL;
-- The funnel's tokens by stage, summed from the index alone (no table, no sort).
CREATE INDEX token_ledger_stage ON token_ledger (endpoint, kind, tokens);
"""


MIGRATIONS: list[str] = [_V1, _V2, _ALERTS, _RANKING, _SELECTIONS, _FUNNEL]
