"""Config: the sample is the defaults, every broken file is refused with its key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import msgspec
import pytest

from dealsd import selections
from dealsd.config import (
    DEFAULT_CONFIG_PATH,
    EX_CONFIG,
    Change,
    Config,
    ConfigError,
    check_config,
    default_selection,
    diff_live,
    load_api_key,
    load_config,
    resolve_config_path,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "config.toml"

# (id, file content, expected key (None = the file itself), message fragment)
# One [[selection]] table; keys appended after it land in it (its sub-tables last).
SEL = "[[selection]]\nname = 'books'\nquery = { priceTypes = [2] }\n"
BROKEN: list[tuple[str, str | bytes, str | None, str]] = [
    (
        "wrong type",
        "[upserter]\ninterval_s = 'abc'\n",
        "upserter.interval_s",
        "expected an integer >= 1, got 'abc'",
    ),
    ("zero interval", "[janitor]\ninterval_s = 0\n", "janitor.interval_s", ">= 1, got 0"),
    ("float for int", "[upserter]\ninterval_s = 1.5\n", "upserter.interval_s", "got 1.5"),
    ("bool for int", "[janitor]\nchunk = true\n", "janitor.chunk", "got true"),
    (
        "typo in key",
        "[upserter]\nintervall_s = 3\n",
        "upserter.intervall_s",
        "unknown key (typo?); did you mean interval_s?",
    ),
    ("typo in table", "[backfill]\ndays = 3\n", "backfill", "unknown key (typo?)"),
    ("table as value", "upserter = 3\n", "upserter", "expected a table, got 3"),
    ("keepa as value", "keepa = 'x'\n", "keepa", "expected a table, got 'x'"),
    ("database as value", "database = '/tmp/d.db'\n", "database", "expected a table"),
    ("backfiller as value", "backfiller = true\n", "backfiller", "expected a table, got true"),
    ("janitor as value", "janitor = [1]\n", "janitor", "expected a table"),
    ("tokens as value", "tokens = 1.0\n", "tokens", "expected a table, got 1.0"),
    ("profit as value", "profit = 15\n", "profit", "expected a table, got 15"),
    ("log as value", "log = 'debug'\n", "log", "expected a table, got 'debug'"),
    ("funnel as value", "funnel = 1\n", "funnel", "expected a table, got 1"),
    ("negative full pass", "[upserter]\nfull_pass_h = -1\n", "upserter.full_pass_h", ">= 0"),
    ("screen profit text", "[funnel]\nmin_screen_profit_cents = 'x'\n",
     "funnel.min_screen_profit_cents", "expected an integer, got 'x'"),
    ("screen roi text", "[funnel]\nmin_screen_roi_pct = 'x'\n", "funnel.min_screen_roi_pct",
     "expected a number, got 'x'"),
    ("below threshold", "[funnel]\nbelow_threshold = 'later'\n", "funnel.below_threshold",
     "one of 'skip', 'idle'"),
    ("queue order", "[funnel]\norder = 'oldest'\n", "funnel.order", "one of 'screen', 'newest'"),
    ("detail asks nothing",
     "[funnel]\ndetail_min_profit_cents = 500\ndetail_offers = 0\ndetail_buybox = false\n",
     "funnel.detail_min_profit_cents", "the second tier asks for nothing"),
    ("detail offers 10", "[funnel]\ndetail_offers = 10\n", "funnel.detail_offers",
     "0 (no offers) or 20..100, got 10"),
    ("detail buybox text", "[funnel]\ndetail_buybox = 'yes'\n", "funnel.detail_buybox",
     "expected true or false"),
    ("profitable float", "[funnel]\nprofitable_min_profit_cents = 1.5\n",
     "funnel.profitable_min_profit_cents", "expected an integer, got 1.5"),
    ("profitable roi text", "[funnel]\nprofitable_min_roi_pct = 'x'\n",
     "funnel.profitable_min_roi_pct", "expected a number"),
    ("alerts as value", "alerts = 1\n", "alerts", "expected a table, got 1"),
    ("empty channels file", "[alerts]\nchannels_file = ''\n", "alerts.channels_file", "non-empty"),
    ("zero alerts a minute", "[alerts]\nmax_per_minute = 0\n", "alerts.max_per_minute", ">= 1"),
    ("realert over 100", "[alerts]\nrealert_drop_pct = 101\n", "alerts.realert_drop_pct", "<= 100"),
    ("realert of 0", "[alerts]\nrealert_drop_pct = 0\n", "alerts.realert_drop_pct", "> 0"),
    ("zero poll", "[alerts]\npoll_s = 0\n", "alerts.poll_s", "> 0"),
    ("negative retry", "[alerts]\nretry_base_s = -1\n", "alerts.retry_base_s", "> 0"),
    ("zero retry cap", "[alerts]\nretry_max_s = 0\n", "alerts.retry_max_s", "> 0"),
    ("rule as value", "[alerts]\nrule = 3\n", "alerts.rule", "expected an array of tables, got 3"),
    ("rule without name", "[[alerts.rule]]\nmin_roi_pct = 5\n", "alerts.rule[0].name", "missing"),
    (
        "rule key typo",
        "[[alerts.rule]]\nname = 'x'\nmin_profitt = 1\n",
        "alerts.rule[0].min_profitt",
        "unknown key",
    ),
    ("selection as value", "[upserter]\nselection = 3\n", "upserter.selection", "a table"),
    ("weights as value", "[tokens]\nweights = 3\n", "tokens.weights", "expected a table"),
    ("selections as value", "selection = 3\n", "selection", "expected an array of tables"),
    ("selection domain 7", SEL + "domain = 7\n", "selection[0].domain", "7"),
    ("selection name", SEL.replace("'books'", "'Books!'"), "selection[0].name", "a-z, 0-9"),
    ("selection no query", "[[selection]]\nname = 'a'\n", "selection[0].query", "missing"),
    ("selection interval", SEL + "interval_s = 0\n", "selection[0].interval_s", ">= 1"),
    ("selection pages", SEL + "max_pages_per_run = 68\n", "selection[0].max_pages_per_run", "67"),
    ("selection weight", SEL + "weight = 0\n", "selection[0].weight", "> 0"),
    ("selection full pass", SEL + "full_pass_h = -1\n", "selection[0].full_pass_h", ">= 0"),
    (
        "selection profit typo",
        SEL + "[selection.profit]\nreferal_fee_pct = 3\n",
        "selection[0].profit.referal_fee_pct",
        "unknown [profit] key",
    ),
    (
        "selection profit value",
        SEL + "[selection.profit]\nreferral_fee_pct = 300\n",
        "selection[0].profit.referral_fee_pct",
        "expected a number from 0 to 100, got 300",
    ),
    ("selection funnel as value", SEL + "funnel = 3\n", "selection[0].funnel", "a table, got 3"),
    (
        "selection funnel typo",
        SEL + "[selection.funnel]\nmin_screen_profit = 300\n",
        "selection[0].funnel.min_screen_profit",
        "unknown [selection.funnel] key (a selection sets min_screen_profit_cents, "
        "min_screen_roi_pct, detail_min_profit_cents)",
    ),
    (
        "selection funnel key for all selections",
        SEL + "[selection.funnel]\norder = 'newest'\n",
        "selection[0].funnel.order",
        "unknown [selection.funnel] key",
    ),
    (
        "selection funnel value",
        SEL + "[selection.funnel]\nmin_screen_profit_cents = 1.5\n",
        "selection[0].funnel.min_screen_profit_cents",
        "expected an integer, got 1.5",
    ),
    (
        "second selection funnel value",
        SEL + SEL.replace("books", "toys").replace("[2]", "[1]")
        + "[selection.funnel]\nmin_screen_roi_pct = 'high'\n",
        "selection[1].funnel.min_screen_roi_pct",
        "expected a number, got 'high'",
    ),
    (
        "selection detail asks nothing",
        "[funnel]\ndetail_offers = 0\ndetail_buybox = false\n"
        + SEL + "[selection.funnel]\ndetail_min_profit_cents = 500\n",
        "selection[0].funnel.detail_min_profit_cents",
        "the second tier asks for nothing",
    ),
    (
        "selection query without price type",
        "[[selection]]\nname = 'a'\n[selection.query]\nsortType = 1\n",
        "selection[0].query.priceTypes",
        "exactly one price type",
    ),
    ("two selections one name", SEL + SEL, "selection[1].name", "two [[selection]] tables"),
    (
        "alert rule names no such selection",
        "[[alerts.rule]]\nname = 'r'\nselections = ['toys']\n" + SEL,
        "alerts.rule[0].selections",
        "unknown selection 'toys' (the selections are books)",
    ),
    (
        "the same query twice",
        SEL + SEL.replace("'books'", "'again'"),
        "selection[1].query",
        "the same query on the same domain as selection 'books'",
    ),
    (
        "both selection forms",
        "[upserter.selection]\npriceTypes = [2]\n" + SEL,
        "upserter.selection",
        "move it into a [[selection]]",
    ),
    (
        "pages over 67",
        "[upserter]\nmax_pages_per_run = 68\n",
        "upserter.max_pages_per_run",
        "from 1 to 67, got 68",
    ),
    ("domain 7", "[keepa]\ndomain = 7\n", "keepa.domain", "one of 1, 2, 3, 4, 5, 6, 8"),
    (
        "base_url ftp",
        "[keepa]\nbase_url = 'ftp://api.keepa.com'\n",
        "keepa.base_url",
        "http(s):// URL",
    ),
    ("empty key file", "[keepa]\napi_key_file = ''\n", "keepa.api_key_file", "non-empty"),
    ("zero connect", "[keepa]\nconnect_timeout_s = 0\n", "keepa.connect_timeout_s", "> 0"),
    ("zero attempts", "[keepa]\nmax_attempts = 0\n", "keepa.max_attempts", ">= 1, got 0"),
    (
        "negative timeout",
        "[keepa]\nread_timeout_s = -1\n",
        "keepa.read_timeout_s",
        "a number > 0, got -1",
    ),
    ("offers 10", "[backfiller]\noffers = 10\n", "backfiller.offers", "0 (no offers) or 20..100"),
    ("offers 101", "[backfiller]\noffers = 101\n", "backfiller.offers", "from 0 to 100"),
    ("batch over 100", "[backfiller]\nmax_batch = 101\n", "backfiller.max_batch", "from 1 to 100"),
    ("history not bool", "[backfiller]\nhistory = 'yes'\n", "backfiller.history", "true or false"),
    ("days negative", "[backfiller]\ndays = -1\n", "backfiller.days", ">= 0, got -1"),
    ("stats negative", "[backfiller]\nstats = -180\n", "backfiller.stats", ">= 0, got -180"),
    (
        "live offers as 1",
        "[backfiller]\nonly_live_offers = 1\n",
        "backfiller.only_live_offers",
        "expected true or false, got 1",
    ),
    ("rating not bool", "[backfiller]\nrating = 'no'\n", "backfiller.rating", "true or false"),
    ("buybox as 0", "[backfiller]\nbuybox = 0\n", "backfiller.buybox", "true or false, got 0"),
    ("update under -1", "[backfiller]\nupdate = -2\n", "backfiller.update", ">= -1, got -2"),
    (
        "zero refresh",
        "[backfiller]\nrefresh_after_h = 0\n",
        "backfiller.refresh_after_h",
        "a number > 0, got 0",
    ),
    ("negative idle", "[backfiller]\nidle_s = -1\n", "backfiller.idle_s", "> 0, got -1"),
    (
        "zero backfill attempts",
        "[backfiller]\nmax_attempts = 0\n",
        "backfiller.max_attempts",
        ">= 1, got 0",
    ),
    (
        "retry not a number",
        "[backfiller]\nretry_base_s = 'soon'\n",
        "backfiller.retry_base_s",
        "a number > 0, got 'soon'",
    ),
    ("zero grace", "[janitor]\ngrace_h = 0\n", "janitor.grace_h", "a number > 0, got 0"),
    (
        "min over max",
        "[backfiller]\nmin_batch = 30\nmax_batch = 20\n",
        "backfiller.min_batch",
        "must not exceed backfiller.max_batch (20)",
    ),
    (
        "zero weight",
        "[tokens.weights]\nbackfiller = 0\n",
        "tokens.weights.backfiller",
        "a number > 0, got 0",
    ),
    (
        "weight not a number",
        "[tokens]\nweights = { upserter = 'x' }\n",
        "tokens.weights.upserter",
        "got 'x'",
    ),
    (
        "unknown consumer",
        "[tokens.weights]\njanitor = 1\n",
        "tokens.weights.janitor",
        "unknown consumer",
    ),
    ("batch_minutes 0", "[tokens]\nbatch_minutes = 0\n", "tokens.batch_minutes", "> 0"),
    (
        "bad reference",
        "[profit]\nreference = 'ebay'\n",
        "profit.reference",
        "one of 'used', 'new', 'buy_box', 'used_buy_box', 'amazon', got 'ebay'",
    ),
    (
        "fee over 100",
        "[profit]\nreferral_fee_pct = 150.0\n",
        "profit.referral_fee_pct",
        "from 0 to 100",
    ),
    ("negative fba fee", "[profit]\nfba_fee_cents = -1\n", "profit.fba_fee_cents", ">= 0"),
    (
        "fractional cents",
        "[profit]\nextra_cost_cents = 1.5\n",
        "profit.extra_cost_cents",
        "expected an integer >= 0, got 1.5",
    ),
    *(
        (f"negative {key}", f"[profit]\n{key} = -1\n", f"profit.{key}", ">= 0")
        for key in (
            "buy_shipping_cents",
            "prep_cents",
            "inbound_cents_per_lb",
            "referral_fee_min_cents",
            "closing_fee_cents",
        )
    ),
    (
        "closing fee categories not a list",
        "[profit]\nclosing_fee_categories = 283155\n",
        "profit.closing_fee_categories",
        "expected a list, got 283155",
    ),
    ("bad level", "[log]\nlevel = 'verbose'\n", "log.level", "got 'verbose'"),
    ("bad format", "[log]\nformat = 'xml'\n", "log.format", "'journal'"),
    ("empty db path", "[database]\npath = ''\n", "database.path", "non-empty string"),
    (
        "two priceTypes",
        "[upserter.selection]\npriceTypes = [1, 2]\n",
        "upserter.selection.priceTypes",
        "exactly one price type",
    ),
    (
        "no priceTypes",
        "[upserter.selection]\nsortType = 1\n",
        "upserter.selection.priceTypes",
        "missing",
    ),
    (
        "selection page",
        "[upserter.selection]\npriceTypes = [2]\npage = 3\n",
        "upserter.selection.page",
        "dealsd sets page itself",
    ),
    (
        "selection domainId",
        "[upserter.selection]\npriceTypes = [2]\ndomainId = 1\n",
        "upserter.selection.domainId",
        "[keepa] domain",
    ),
    (
        "selection snake_case",
        "[upserter.selection]\nprice_types = [2]\n",
        "upserter.selection.price_types",
        "did you mean priceTypes?",
    ),
    (
        "selection date",
        "[upserter.selection]\npriceTypes = [2]\nsince = 2024-01-01\n",
        "upserter.selection.since",
        "cannot be sent to Keepa",
    ),
    ("api key in keepa", "[keepa]\napi_key = 'abc123'\n", "keepa.api_key", "api_key_file"),
    ("key at top", "key = 'abc123'\n", "key", "LoadCredential"),
    ("empty file", "", None, "empty config file"),
    ("blank file", "  \n\n\t\n", None, "empty config file"),
    ("not utf-8", b"[log]\nlevel = '\xff\xfe'\n", None, "not UTF-8 text (byte 0xff on line 2)"),
    ("invalid toml", "[upserter]\ninterval_s = \n", None, "invalid TOML"),
    ("invalid toml position", "[log]\nlevel = 'info'\n[log]\n", None, "line 3"),
]


def write(tmp_path: Path, content: str | bytes, name: str = "config.toml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "key", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_config_is_refused_with_key_and_reason(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    key: str | None,
    fragment: str,
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert fragment in info.value.message
    prefix = f"{path}: {key}: " if key else f"{path}: "
    assert str(info.value) == prefix + info.value.message
    assert check_config(path) == EX_CONFIG == 78
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(info.value) in captured.err


def test_broken_table_has_a_case_for_every_table_and_key() -> None:
    # From the schema itself: a table or key added to Config without a case
    # here fails this test. A case for a key inside a free-form table
    # (upserter.selection.page, tokens.weights.upserter) counts for the table.
    # selection[0].domain counts for the array of tables' field selection.domain.
    keys = {re.sub(r"\[\d+\]", "", c[2]) for c in BROKEN if c[2] is not None}
    missing = []
    for table in msgspec.structs.fields(Config):
        if table.name not in keys:
            missing.append(table.name)
        kind = table.type
        if typing.get_origin(kind) is list:  # an array of tables: [[selection]]
            kind = typing.get_args(kind)[0]
        for field in msgspec.structs.fields(kind):
            dotted = f"{table.name}.{field.name}"
            if not any(k == dotted or k.startswith(dotted + ".") for k in keys):
                missing.append(dotted)
    assert missing == [], f"no broken-config case for {missing}"
    assert any(c[2] is None for c in BROKEN)  # and the file itself (empty, not TOML)


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "unreadable"])
def test_config_path_that_is_not_a_readable_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.toml"
    fragment = {
        "missing": "no such config file",
        "directory": "is a directory",
        "fifo": "not a regular file",
        "unreadable": "permission denied",
    }[kind]
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        # Opening a FIFO would block until a writer came: it must be refused unopened.
        os.mkfifo(path)
    elif kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a mode-000 file anyway; the dir and fifo cases cover it")
        path.write_text("[log]\nlevel = 'info'\n")
        path.chmod(0)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key is None
    assert fragment in str(info.value).lower()
    assert check_config(path) == EX_CONFIG


def test_check_config_in_a_real_process(tmp_path: Path) -> None:
    path = write(tmp_path, "[upserter]\ninterval_s = 'abc'\n")
    code = "import sys; from dealsd.config import check_config; sys.exit(check_config(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 78, proc.stderr
    assert f"{path}: upserter.interval_s: expected an integer >= 1, got 'abc'" in proc.stderr
    ok = subprocess.run(
        [sys.executable, "-c", code, str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, f"config OK: {SAMPLE}")


def test_sample_is_the_defaults_and_documents_every_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert load_config(SAMPLE) == Config()
    assert check_config(SAMPLE) == 0
    assert capsys.readouterr().out.strip() == f"config OK: {SAMPLE}"
    raw = tomllib.loads(SAMPLE.read_text())
    text = SAMPLE.read_text()
    for table, struct in msgspec.structs.asdict(Config()).items():
        if table == "selection":  # [[selection]]: none by default, an example commented out
            assert "# [[selection]]" in text
            continue
        for field in msgspec.structs.asdict(struct):
            if getattr(struct, field) is None:  # no default value: shown commented out
                assert f"# {field} = " in text
                continue
            if field == "rule":  # a list of tables, empty by default: an example, commented
                assert f"# [[{table}.{field}]]" in text
                continue
            assert field in raw[table], f"[{table}] {field} missing from config.toml"
    assert Config().keepa.base_url == "https://api.keepa.com"
    assert Config().database.path == "/var/lib/dealsd/deals.db"
    assert raw["upserter"]["selection"] == default_selection()


def test_the_samples_selections_load_with_their_own_funnel_thresholds(tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    start = text.index("# [[selection]]")
    block = text[start : text.index("\n\n", start)]
    lines = [line.removeprefix("#").removeprefix(" ") for line in block.splitlines()]
    cfg = load_config(write(tmp_path, "\n".join(lines) + "\n"))
    assert [s.name for s in cfg.selection] == ["books", "de-toys", "jp-books"]
    funnels = selections.funnels(cfg)
    assert funnels["de-toys"] == cfg.funnel  # no overrides: [funnel] as it is
    jp = funnels["jp-books"]
    assert (jp.min_screen_profit_cents, jp.detail_min_profit_cents) == (450, 1200)
    assert jp.min_screen_roi_pct is None and jp.order == cfg.funnel.order
    # A changed override is a change of [[selection]], which a reload applies live.
    changed = write(tmp_path, "\n".join(lines).replace("= 450", "= 900") + "\n", "new.toml")
    live, restart = diff_live(cfg, load_config(changed))
    assert [c.key for c in live] == ["selection"] and restart == []


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "[upserter]\ninterval_s = 5\n[tokens.weights]\nupserter = 2\n")
    )
    assert cfg.upserter.interval_s == 5
    assert cfg.upserter.selection == default_selection()
    # A consumer left out keeps its default share instead of vanishing.
    assert cfg.tokens.weights == {"upserter": 2.0, "backfiller": 3.0}
    assert cfg.backfiller == Config().backfiller


def test_selection_table_replaces_the_default_whole(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[upserter.selection]\npriceTypes = [1]\nsortType = 1\n"))
    assert cfg.upserter.selection == {"priceTypes": [1], "sortType": 1}


def test_comments_only_and_bom_load_as_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing set yet\n")) == Config()
    bom = write(tmp_path, "\ufeff[log]\nlevel = 'debug'\n".encode(), "bom.toml")
    assert load_config(bom).log.level == "debug"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.upserter.interval_s = 1  # type: ignore[misc]


def test_resolve_config_path_order() -> None:
    env = {"DEALSD_CONFIG": "/srv/dealsd.toml"}
    assert resolve_config_path("/x/c.toml", env) == Path("/x/c.toml")
    assert resolve_config_path(None, env) == Path("/srv/dealsd.toml")
    assert resolve_config_path(None, {"DEALSD_CONFIG": " "}) == DEFAULT_CONFIG_PATH
    assert resolve_config_path(None, {}) == Path("/etc/dealsd/config.toml")
    with pytest.raises(ConfigError):
        resolve_config_path("", env)


def with_key_file(tmp_path: Path, content: str) -> Config:
    key_file = tmp_path / "key.txt"
    key_file.write_text(content)
    return load_config(write(tmp_path, f"[keepa]\napi_key_file = '{key_file}'\n", "k.toml"))


def test_api_key_order_credential_then_file_then_env(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "keepa_api_key").write_text("  from-credential\n")
    cfg = with_key_file(tmp_path, "from-file\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "KEEPA_API_KEY": "from-env"}
    assert load_api_key(cfg, env) == "from-credential"
    # A credentials directory without our credential falls through to the file.
    (creds / "keepa_api_key").unlink()
    assert load_api_key(cfg, env) == "from-file"
    assert load_api_key(Config(), env) == "from-env"
    assert load_api_key(Config(), {"KEEPA_API_KEY": " k \n"}) == "k"


def test_api_key_missing_names_the_three_places() -> None:
    with pytest.raises(ConfigError) as info:
        load_api_key(Config(), {"KEEPA_API_KEY": "  "})
    assert info.value.key == "keepa.api_key"
    for place in ("CREDENTIALS_DIRECTORY", "api_key_file", "KEEPA_API_KEY"):
        assert place in info.value.message


def test_api_key_file_unreadable_or_empty_is_named(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"[keepa]\napi_key_file = '{tmp_path}'\n"))
    with pytest.raises(ConfigError) as info:
        load_api_key(cfg, {"KEEPA_API_KEY": "would-be-used"})
    assert str(tmp_path) in str(info.value) and "directory" in str(info.value)
    with pytest.raises(ConfigError, match="empty"):
        load_api_key(with_key_file(tmp_path, "\n\n"), {})
    with pytest.raises(ConfigError) as info:
        load_api_key(with_key_file(tmp_path, "secret-one secret-two"), {})
    assert "secret" not in str(info.value)


def test_diff_live_splits_live_changes_from_restart_ones(tmp_path: Path) -> None:
    old = load_config(SAMPLE)
    new = load_config(
        write(
            tmp_path,
            """
[keepa]
base_url = "http://127.0.0.1:9"
[database]
path = "/tmp/other.db"
[upserter]
interval_s = 60
[upserter.selection]
priceTypes = [2]
sortType = 1
titleSearch = "python"
[tokens.weights]
backfiller = 5
[log]
level = "debug"
format = "json"
""",
        )
    )
    live, restart = diff_live(old, new)
    by_key = {c.key: c for c in live}
    assert by_key["upserter.interval_s"] == Change("upserter.interval_s", 300, 60)
    assert by_key["upserter.selection.sortType"] == Change("upserter.selection.sortType", 4, 1)
    assert by_key["upserter.selection.titleSearch"].old is None
    assert by_key["upserter.selection.minRating"].new is None
    assert by_key["tokens.weights.backfiller"] == Change("tokens.weights.backfiller", 3.0, 5.0)
    assert by_key["log.level"] == Change("log.level", "info", "debug")
    assert sorted(restart) == ["database.path", "keepa.base_url", "log.format"]
    assert diff_live(new, new) == ([], [])
    # What the daemon does with it: the restart-only tables keep running values.
    kept = msgspec.structs.replace(new, keepa=old.keepa, database=old.database)
    assert diff_live(old, kept)[1] == ["log.format"]


# -- check-config and the API key it can see -------------------------------------------


def _me() -> str:
    import pwd

    return f"user {pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "empty", "unreadable"])
def test_check_config_refuses_an_unusable_key_file_naming_key_and_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    key_file = tmp_path / "keepa_api_key"
    fragment = {
        "missing": "no such API key file",
        "directory": "is a directory",
        "fifo": "not a regular file",
        "empty": "API key file is empty",
        "unreadable": "permission denied",
    }[kind]
    if kind == "directory":
        key_file.mkdir()
    elif kind == "fifo":
        os.mkfifo(key_file)  # opened, it would block check-config until a writer came
    elif kind == "empty":
        key_file.write_text("\n")
    elif kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a mode-000 file anyway")
        key_file.write_text("the-secret-key\n")
        key_file.chmod(0)
    path = write(tmp_path, f"[keepa]\napi_key_file = '{key_file}'\n")
    # $KEEPA_API_KEY does not rescue a named file that is broken: `run` would refuse it too.
    env = {"KEEPA_API_KEY": "would-not-be-used"}
    assert check_config(path, env=env) == EX_CONFIG == 78
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert line.startswith(f"dealsd: config error: {key_file}: keepa.api_key_file: "), line
    assert fragment in (line.lower() if kind == "unreadable" else line)
    if kind != "empty":  # whether a file can be read depends on who reads it
        assert f"read as {_me()}" in line
    assert "secret" not in line
    with pytest.raises(ConfigError) as info:  # what `run` says is the same error
        load_api_key(load_config(path), env)
    assert str(info.value) in line


def test_check_config_says_where_the_key_is_and_never_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "keepa_api_key"
    key_file.write_text("s3cret-k3y\n")
    path = write(tmp_path, f"[keepa]\napi_key_file = '{key_file}'\n")
    assert check_config(path, env={}) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"config OK: {path}"
    assert captured.err.strip() == f"dealsd: API key: {key_file}, read as {_me()}"
    # The credential comes first, as in `run`: it is the one checked.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "keepa_api_key").write_text("")
    assert check_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)}) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{creds / 'keepa_api_key'}: keepa.api_key: API key file is empty" in err
    plain = write(tmp_path, "[log]\nlevel = 'info'\n", "env-key.toml")
    assert check_config(plain, env={"KEEPA_API_KEY": "s3cret-k3y"}) == 0
    captured = capsys.readouterr()
    assert "dealsd: API key: $KEEPA_API_KEY" in captured.err
    assert "s3cret" not in captured.out + captured.err


def test_check_config_with_no_key_visible_warns_where_systemd_hands_it_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ExecReload runs check-config as root, without the service's credential.
    path = write(tmp_path, "[log]\nlevel = 'info'\n")
    assert check_config(path, env={}) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"config OK: {path}"
    warning = captured.err.strip()
    assert warning.startswith("dealsd: warning: no API key visible here"), warning
    assert "LoadCredential=keepa_api_key:/etc/dealsd/keepa_api_key" in warning
    assert "could not be checked from here" in warning
    assert len(captured.err.splitlines()) == 1
    # An invalid file is still refused: the warning never hides an error.
    bad = write(tmp_path, "[upserter]\ninterval_s = 0\n", "bad.toml")
    assert check_config(bad, env={}) == EX_CONFIG
    assert "warning" not in capsys.readouterr().err


def test_a_credential_directory_this_user_may_not_enter_is_named_not_a_traceback(
    tmp_path: Path,
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root enters a mode-000 directory anyway")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "keepa_api_key").write_text("k\n")
    creds.chmod(0)
    try:
        with pytest.raises(ConfigError) as info:
            load_api_key(Config(), {"CREDENTIALS_DIRECTORY": str(creds)})
        assert str(info.value).startswith(f"{creds / 'keepa_api_key'}: keepa.api_key: ")
        assert "permission denied" in str(info.value).lower() and "read as " in str(info.value)
    finally:
        creds.chmod(0o700)


def test_check_config_says_how_to_move_to_selection_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path, "[upserter.selection]\npriceTypes = [1]\n")
    assert check_config(old, env={"KEEPA_API_KEY": "k"}) == 0
    err = capsys.readouterr().err
    assert f"dealsd: note: {old}: upserter.selection: read as one [[selection]]" in err
    assert 'name = "default"' in err and "[selection.query]" in err
    # The new form (and a file with no selection at all) is not told anything.
    new = write(tmp_path, "[[selection]]\nname = 'default'\n[selection.query]\npriceTypes = [1]\n")
    assert check_config(new, env={"KEEPA_API_KEY": "k"}) == 0
    assert "note" not in capsys.readouterr().err
    cfg = load_config(new)
    [sel] = selections.resolve(cfg)
    assert (sel.name, sel.worker, sel.domain, dict(sel.query)) == (
        "default", "upserter", 1, {"priceTypes": [1]}
    )
    # Moved as told, the checkpoints are the same: they are named by query and domain.
    [legacy] = selections.resolve(load_config(old))
    assert legacy.key == sel.key and legacy.worker == sel.worker
