"""`dealsd deals` on a database the real daemon filled from the simulator.

One module-wide database: the simulator over loopback, the daemon in
process until most deals are backfilled (the missing and invalid products
stay unbackfilled, so NULL estimates are there too). Each expectation is
computed here from the raw rows, not by the code under test.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Running, clean_env, sim_options, wait_for, write_config

from dealsd.cli import main
from dealsd.config import load_config
from dealsd.deals import FIELD_KEYS
from dealsd.simulator import Simulator

CATALOGUE = 400
# The simulator's products come from the real samples, which have no used
# history: resales are priced at the new average so most deals get a profit.
PROFIT = '[profit]\nreference = "new"\n'


def _rows(db: Path, sql: str = "SELECT * FROM deals") -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def _settled(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        rows = _rows(db, "SELECT count(*) AS n, count(backfilled_at) AS b, "
                         "sum(backfill_attempts > 0) AS failed FROM deals")  # fmt: skip
    except sqlite3.OperationalError:
        return False
    n, b, failed = rows[0]["n"], rows[0]["b"], rows[0]["failed"] or 0
    return bool(n >= 300 and b + failed >= n)


async def _fill(directory: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    # Started by hand, not by conftest's function-scoped fixtures: the
    # database serves the whole module.
    sim = Simulator(sim_options(catalogue_size=CATALOGUE, missing_rate=0.03, invalid_rate=0.02))
    path = write_config(directory, await sim.start("127.0.0.1", 0), extra=PROFIT)
    db = directory / "deals.db"
    daemon = Running(load_config(path), path)
    try:
        await wait_for(lambda: _settled(db) or daemon.task.done(), 60, "the backfill", every=0.2)
        assert not daemon.task.done(), "the daemon stopped early"
        # While the daemon runs and writes: a real `dealsd deals` process.
        running = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "dealsd", "deals", "--database", str(db)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert await daemon.finish() == 0
    finally:
        daemon.stop.set()
        if not daemon.task.done():
            daemon.task.cancel()
        await sim.stop()
    return db, running


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("deals")
    db, running = asyncio.run(_fill(directory))
    assert running.returncode == 0, running.stderr
    yield db, running.stdout


@pytest.fixture
def db(filled: tuple[Path, str]) -> Path:
    return filled[0]


def deals(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["deals", *args])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> list[dict[str, Any]]:
    code, out, err = deals(capsys, "--database", str(db), "--json", "--limit", "10000", *args)
    assert code == 0, err
    docs: list[dict[str, Any]] = json.loads(out)
    return docs


def roi(row: dict[str, Any]) -> float | None:
    value: float | None = row["roi_pct"]
    return value


def sold(row: dict[str, Any]) -> int | None:
    """Sales per month as the view defines it: Amazon's figure, else the estimate."""
    value: int | None = row["monthly_sold"]
    return row["est_sales_per_month"] if value is None else value


def expected_order(rows: list[dict[str, Any]], key: Any, *, desc: bool) -> list[str]:
    """ASINs sorted by ``key(row)``, best first, NULLs last, ties by ASIN."""
    known = [r for r in rows if key(r) is not None]
    unknown = sorted(r["asin"] for r in rows if key(r) is None)
    known.sort(key=lambda r: r["asin"])
    known.sort(key=key, reverse=desc)  # stable: ASIN order within ties
    return [r["asin"] for r in known] + unknown


def test_the_database_has_what_the_tests_need(db: Path) -> None:
    rows = _rows(db)
    assert len(rows) >= 300
    assert sum(r["profit_cents"] is not None for r in rows) > 100
    assert any(r["profit_cents"] is None for r in rows)  # the NULL cases below
    assert sum(r["profit_cents"] is not None and r["profit_cents"] > 0 for r in rows) > 10
    assert len({r["root_category"] for r in rows}) > 2


def test_works_while_the_daemon_runs(filled: tuple[Path, str]) -> None:
    _db, out = filled
    lines = out.splitlines()
    assert lines[0].split() == ["ASIN", "title", "buy", "sale", "profit", "ROI", "rank",
                                "sold/mo", "age"]  # fmt: skip
    assert len(lines) == 2 + 20  # header, rule, the default 20


@pytest.mark.parametrize(
    ("sort", "column", "desc"),
    [
        ("profit", "profit_cents", True),
        ("margin", "margin_pct", True),
        ("rank", "current_sales_rank", False),
        ("new", "first_seen_at", True),
        ("roi", None, True),
    ],
)
def test_each_sort_orders_best_first_with_nulls_last(
    capsys: pytest.CaptureFixture[str], db: Path, sort: str, column: str | None, desc: bool
) -> None:
    rows = _rows(db)
    key = roi if column is None else (lambda r: r[column])
    got = [d["asin"] for d in as_json(capsys, db, "--sort", sort)]
    assert got == expected_order(rows, key, desc=desc)


def test_the_default_is_the_best_20_by_profit(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    code, out, _ = deals(capsys, "--database", str(db), "--json")
    assert code == 0
    want = expected_order(_rows(db), lambda r: r["profit_cents"], desc=True)[:20]
    assert [d["asin"] for d in json.loads(out)] == want


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        (("--min-profit", "3.5"), lambda r: r["profit_cents"] is not None
         and r["profit_cents"] >= 350),
        (("--min-roi", "20"), lambda r: (v := roi(r)) is not None and v >= 20),
        (("--max-rank", "500000"), lambda r: r["current_sales_rank"] is not None
         and r["current_sales_rank"] <= 500000),
        (("--min-profit", "0", "--max-rank", "2000000"), lambda r: r["profit_cents"] is not None
         and r["profit_cents"] >= 0 and r["current_sales_rank"] is not None
         and r["current_sales_rank"] <= 2000000),
    ],
)  # fmt: skip
def test_each_filter_keeps_exactly_the_matching_deals(
    capsys: pytest.CaptureFixture[str], db: Path, args: tuple[str, ...], keep: Any
) -> None:
    rows = _rows(db)
    want = {r["asin"] for r in rows if keep(r)}
    assert 0 < len(want) < len(rows)  # the filter selects something and drops something
    assert {d["asin"] for d in as_json(capsys, db, *args)} == want


def test_categories_one_or_several(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    rows = _rows(db)
    cats = sorted({r["root_category"] for r in rows if r["root_category"] is not None})
    assert len(cats) >= 2
    one = {r["asin"] for r in rows if r["root_category"] == cats[0]}
    two = {r["asin"] for r in rows if r["root_category"] in cats[:2]}
    assert 0 < len(one) < len(two) < len(rows)
    assert {d["asin"] for d in as_json(capsys, db, "--category", str(cats[0]))} == one
    both = as_json(capsys, db, "--category", str(cats[0]), "--category", str(cats[1]))
    assert {d["asin"] for d in both} == two


def test_limit(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    code, out, _ = deals(capsys, "--database", str(db), "--json", "--limit", "7")
    assert code == 0 and len(json.loads(out)) == 7
    with pytest.raises(SystemExit) as exc:
        main(["deals", "--database", str(db), "--limit", "0"])
    assert exc.value.code == 2


def test_selection_is_refused_until_the_database_records_selections(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    # A database from before the multi-selection schema (v5) has no table.
    old = tmp_path / "old.db"
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(old)
    src.backup(dst)
    dst.execute("DROP TABLE deal_selections")
    dst.commit()
    dst.close()
    code, out, err = deals(capsys, "--database", str(old), "--selection", "books")
    assert code == 64 and out == ""
    assert "no deal_selections table" in err and "--selection books" in err
    # With the table of the multi-selection schema, it filters.
    copy = tmp_path / "copy.db"
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    rows = _rows(db)
    picked = [r["asin"] for r in rows[:5]]
    dst.execute("DELETE FROM deal_selections")
    t = "2026-11-28T12:00:00Z"
    dst.executemany("INSERT INTO deal_selections VALUES (?, ?, ?, ?, ?)",
                    [(r["domain_id"], r["asin"], "books", t, t) for r in rows[:5]]
                    + [(rows[9]["domain_id"], rows[9]["asin"], "toys", t, t),
                       (rows[5]["domain_id"] + 1, rows[5]["asin"], "books", t, t)])  # fmt: skip
    dst.commit()
    dst.close()
    assert {d["asin"] for d in as_json(capsys, copy, "--selection", "books")} == set(picked)


def _columns(table: str) -> list[dict[str, str]]:
    """The terminal table as dicts, cut at the rule line's column spans."""
    header, rule, *body = table.splitlines()
    spans, pos = [], 0
    for dashes in rule.split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    names = [header[a:b].strip() for a, b in spans]
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)} for line in body]


def test_nulls_are_blank_never_zero(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    rows = _rows(db)
    null = next(r for r in sorted(rows, key=lambda r: r["asin"]) if r["profit_cents"] is None)
    # Unknown profit sorts last: ask for the whole table to reach it.
    code, out, _ = deals(capsys, "--database", str(db), "--limit", "10000")
    assert code == 0
    table = {c["ASIN"]: c for c in _columns(out)}
    assert len(table) == len(rows)
    assert table[null["asin"]]["profit"] == "" and table[null["asin"]]["ROI"] == ""
    assert table[null["asin"]]["sale"] == ("" if null["expected_sale_cents"] is None else
                                           f"{null['expected_sale_cents'] / 100:.2f}")  # fmt: skip
    known = next(r for r in rows if r["profit_cents"] is not None)
    assert table[known["asin"]]["profit"] == f"{known['profit_cents'] / 100:.2f}"
    doc = {d["asin"]: d for d in as_json(capsys, db)}[null["asin"]]
    assert doc["profit"] is None and doc["roi_pct"] is None
    code, out, _ = deals(capsys, "--database", str(db), "--csv", "--limit", "10000")
    line = {r["asin"]: r for r in csv.DictReader(io.StringIO(out))}[null["asin"]]
    assert line["profit"] == "" and line["roi_pct"] == ""


def test_csv_reads_back_and_json_matches_its_columns(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    code, out, _ = deals(capsys, "--database", str(db), "--csv", "--limit", "50")
    assert code == 0
    reader = csv.DictReader(io.StringIO(out))
    lines = list(reader)
    assert tuple(reader.fieldnames or ()) == FIELD_KEYS
    docs = as_json(capsys, db, "--limit", "50")
    assert len(lines) == len(docs) == 50
    raw = {r["asin"]: r for r in _rows(db)}
    for line, doc in zip(lines, docs, strict=True):
        assert tuple(doc) == FIELD_KEYS
        for key in FIELD_KEYS:
            value = doc[key]
            assert line[key] == ("" if value is None else str(value)), (key, line, doc)
        r = raw[doc["asin"]]
        assert doc["profit"] == (None if r["profit_cents"] is None else r["profit_cents"] / 100)
        assert doc["buy"] == (None if r["buy_price_cents"] is None else r["buy_price_cents"] / 100)
        assert doc["roi_pct"] == r["roi_pct"]
        assert doc["sales_rank"] == r["current_sales_rank"]
        assert doc["sales_per_month"] == sold(r)
        assert doc["updated_at"] == r["keepa_last_update"]


def test_yen_have_no_cents_and_mixed_currencies_are_named(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    # Two deals moved to amazon.co.jp, their money whole yen (dealsd.marketplaces).
    mixed = tmp_path / "mixed.db"
    shutil.copy(db, mixed)
    usd = sorted(r["asin"] for r in _rows(db) if (r["profit_cents"] or 0) > 1000)
    yen_asin, cheap_yen = usd[0], usd[1]
    conn = sqlite3.connect(mixed)
    with conn:
        conn.execute(
            "UPDATE deals SET domain_id = 5, currency = 'JPY', profit_cents = 1999, "
            "buy_price_cents = 3500 WHERE asin = ?", (yen_asin,)
        )  # fmt: skip
        conn.execute(
            "UPDATE deals SET domain_id = 5, currency = 'JPY', profit_cents = 40 WHERE asin = ?",
            (cheap_yen,),
        )
    conn.close()
    code, out, err = deals(capsys, "--database", str(mixed), "--limit", "10000")
    assert code == 0
    # Ranking by profit puts yen beside dollars as if equal: the table says so.
    assert "several currencies: profit ranks their amounts as if equal" in err
    by_roi = deals(capsys, "--database", str(mixed), "--sort", "roi", "--limit", "10000")
    assert "several currencies" not in by_roi[2] and "JPY" in by_roi[1]
    table = {c["ASIN"]: c for c in _columns(out)}
    assert (table[yen_asin]["profit"], table[yen_asin]["buy"]) == ("1999", "3500")
    assert table[yen_asin]["cur"] == "JPY" and table[usd[2]]["cur"] == "USD"
    doc = {d["asin"]: d for d in as_json(capsys, mixed)}
    assert (doc[yen_asin]["profit"], doc[yen_asin]["currency"]) == (1999, "JPY")
    assert doc[usd[2]]["currency"] == "USD"
    code, out, _ = deals(capsys, "--database", str(mixed), "--csv", "--limit", "10000")
    line = {r["asin"]: r for r in csv.DictReader(io.StringIO(out))}[yen_asin]
    assert (line["profit"], line["currency"]) == ("1999", "JPY")
    # --min-profit is in each deal's own units: 10 is ¥10 or $10.00.
    kept = {d["asin"] for d in as_json(capsys, mixed, "--min-profit", "10")}
    assert yen_asin in kept and cheap_yen in kept
    want_usd = {r["asin"] for r in _rows(mixed) if r["currency"] == "USD"
                and r["profit_cents"] is not None and r["profit_cents"] >= 1000}  # fmt: skip
    assert kept - {yen_asin, cheap_yen} == want_usd and want_usd
    kept = {d["asin"] for d in as_json(capsys, mixed, "--min-profit", "100")}
    assert yen_asin in kept and cheap_yen not in kept
    # One currency: no column for it, and nothing to say.
    code, out, err = deals(capsys, "--database", str(db))
    assert "cur" not in _columns(out)[0] and "several currencies" not in err


def test_the_config_names_the_database(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    path = db.parent / "config-db.toml"
    path.write_text(f'[database]\npath = "{db}"\n')
    code, out, err = deals(capsys, "--config", str(path), "--json", "--limit", "5")
    assert code == 0, err
    assert [d["asin"] for d in json.loads(out)] == [d["asin"] for d in as_json(capsys, db)][:5]


def test_no_database_or_a_bad_config_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = deals(capsys, "--database", str(tmp_path / "none.db"))
    assert code == 2 and "no database at" in err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    code, _, err = deals(capsys, "--database", str(garbage))
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[upserter]\nintervl_s = 5\n")
    code, _, err = deals(capsys, "--config", str(bad))
    assert code == 2 and "intervl_s" in err


def test_the_demo_ends_on_its_best_deals(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-m", "dealsd", "demo", "--seconds", "4"], capture_output=True,
        text=True, cwd=root, timeout=60, env=clean_env(TMPDIR=str(tmp_path)),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    start = lines.index("the 10 best deals it found, by profit:")
    more = next(i for i, ln in enumerate(lines) if ln.startswith("see more: "))
    table = _columns("\n".join(lines[start + 1 : more]))
    assert 0 < len(table) <= 10
    db = Path(next(ln.split(": ", 1)[1] for ln in lines if ln.startswith("database: ")))
    want = expected_order(_rows(db), lambda r: r["profit_cents"], desc=True)[:10]
    assert [c["ASIN"] for c in table] == want
    assert table[0]["profit"] != ""  # the demo prices its deals
    command = lines[more].split(": ", 1)[1]
    assert "--limit 100" in command
    argv = shlex.split(command)
    if argv[0] == "dealsd":
        argv[0] = shutil.which("dealsd") or argv[0]
    shown = subprocess.run(argv, capture_output=True, text=True, cwd=root, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert [c["ASIN"] for c in _columns(shown.stdout)][:10] == want
