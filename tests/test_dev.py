"""dev.py: the path check on real git repositories, and the venv set-up without pip.

The offending paths are put together at run time ("/" + "home/..."): this
file is tracked too, and the check reads it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dev = load_dev()


def git_repo(path: Path, files: dict[str, str | bytes], untracked: dict[str, str]) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for name, content in {**files, **untracked}.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    subprocess.run(["git", "add", "--", *files], cwd=path, check=True)
    return path


HOME = "/" + "home/someone/dealsd/tests/x.py"
WORK = "/" + "work/main/dealsd/cli.py"
WHEELS = "/" + "opt/wheels"
SHARED = ".." + "/shared/notes.md"
LIBRARY = ".." + "/../library/env"


def test_a_repo_naming_this_machine_or_a_path_outside_it_fails(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo", {
        "README.md": f"see {SHARED} first\nall fine here\n",
        "docs/notes.md": f"the wheels in `{WHEELS}`\nfrom `{LIBRARY}`\n",
        "tests/test_x.py": f'SAMPLES = "{HOME}"\nCLI = Path("{WORK}")\n',
        "url.txt": f"file://{WORK}\n",
        "own.txt": "",
    }, untracked={})
    # The checkout's own absolute path, wherever it is (here under pytest's tmp).
    (repo / "own.txt").write_text(f"built in {repo.resolve()}/dealsd\n")
    subprocess.run(["git", "add", "own.txt"], cwd=repo, check=True)

    found = dev.path_findings(repo)
    assert found == [
        f"README.md:1: path outside the repository: {SHARED}",
        f"docs/notes.md:1: absolute path outside /opt/dealsd: {WHEELS}",
        f"docs/notes.md:2: path outside the repository: {LIBRARY}",
        f"own.txt:1: the checkout's own path: {repo.resolve()}",
        f"tests/test_x.py:1: absolute path of a machine: {HOME}",
        f"tests/test_x.py:2: absolute path of a machine: {WORK}",
        f"url.txt:1: absolute path of a machine: {WORK}",
    ]


def test_paths_the_product_uses_pass_and_skipped_files_are_not_read(tmp_path: Path) -> None:
    clean = "\n".join([
        "#!/usr/bin/env python3",
        "config: /etc/dealsd/config.toml, database: `/var/lib/dealsd/deals.db`",
        "ExecStart=/opt/dealsd/.venv/bin/dealsd run >/dev/null",
        'path = "/tmp/other.db"  # made up, in a test',
        "GET /deal and /product, then /proc/self/fd; outside `/home`, hidden by the unit",
        "https://example.invalid/home/page and $here/../.venv/bin/python",
        "the schema: [schema](../docs/schema.md)",
    ])
    repo = git_repo(tmp_path / "repo", {
        "systemd/README.md": clean + "\n",
        "docs/schema.md": "tables\n",
        "dealsd/samples/product_X.json": f'{{"note": "{HOME}"}}\n',
        "logo.png": b"\x89PNG\0" + HOME.encode(),
    }, untracked={"scratch.txt": f"{HOME}\n"})

    assert dev.path_findings(repo) == []
    assert dev.check_paths(repo) == 0


def test_check_paths_prints_each_finding_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = git_repo(tmp_path / "repo", {"a.md": f"{HOME}\n{HOME}\n"}, untracked={})
    assert dev.check_paths(repo) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"a.md:{n}: absolute path of a machine: {HOME}" for n in (1, 2)]
    assert "2 path(s)" in out.err


def test_the_repository_itself_passes() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert dev.path_findings(ROOT) == []


def test_no_ensurepip_and_no_pip_names_the_package_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Python without pip (a real venv made --without-pip) plays the system's
    # python3; only ensurepip's absence is pretended: hiding the stdlib's needs root.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    venv = tmp_path / "venv"
    monkeypatch.setattr(sys, "executable", str(bare / "bin" / "python"))
    monkeypatch.setattr(dev, "VENV", venv)
    monkeypatch.setattr(dev, "PY", venv / "bin" / "python")
    monkeypatch.setattr(dev, "_has_ensurepip", lambda: False)

    with pytest.raises(SystemExit) as exc:
        dev._create_venv()

    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    message = str(exc.value.code)
    assert message.startswith("dev.py: ") and "\n" not in message
    assert f"python{minor}-venv" in message
    assert not venv.exists()  # a half-made venv would make the next run skip set-up
    assert "creating" in capsys.readouterr().out
