"""Config: the sample is the defaults, every broken file is refused with its key."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

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
    (
        "negative timeout",
        "[keepa]\nread_timeout_s = -1\n",
        "keepa.read_timeout_s",
        "a number > 0, got -1",
    ),
    ("offers 10", "[backfiller]\noffers = 10\n", "backfiller.offers", "0 (no offers) or 20..100"),
    ("offers 101", "[backfiller]\noffers = 101\n", "backfiller.offers", "from 0 to 100"),
    ("batch over 100", "[backfiller]\nmax_batch = 101\n", "backfiller.max_batch", "from 1 to 100"),
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
        "one of 'used', 'new', 'buy_box', 'amazon', got 'ebay'",
    ),
    (
        "fee over 100",
        "[profit]\nreferral_fee_pct = 150.0\n",
        "profit.referral_fee_pct",
        "from 0 to 100",
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


def test_broken_table_has_enough_cases() -> None:
    assert len(BROKEN) >= 20


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
        for field in msgspec.structs.asdict(struct):
            if field in ("api_key_file", "channels_file"):  # no default: shown commented out
                assert f"# {field} = " in text
                continue
            if field == "rule":  # a list of tables, empty by default: an example, commented
                assert f"# [[{table}.{field}]]" in text
                continue
            assert field in raw[table], f"[{table}] {field} missing from config.toml"
    assert Config().keepa.base_url == "https://api.keepa.com"
    assert Config().database.path == "/var/lib/dealsd/deals.db"
    assert raw["upserter"]["selection"] == default_selection()


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
