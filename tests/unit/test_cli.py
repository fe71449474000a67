"""The server-side commands through `backend.cli.main` on a temporary data folder (SQLite
catalog, embedded qdrant-edge store, the fake encoder): what they print and return, and that
a command touching only the catalog never opens the vector store."""

from __future__ import annotations

from pathlib import Path

import pytest

import backend.app
from backend import cli
from tests.fakes import FakeEncoder
from tests.integration.test_crash_safety import make_catalog


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PRODSEARCH_DATA_DIR", "PRODSEARCH_DATABASE_URL", "PRODSEARCH_QDRANT_URL",
                 "PRODSEARCH_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backend.app, "make_encoder", lambda settings: FakeEncoder())
    return tmp_path / "data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_migrate_and_keys_use_only_the_catalog(data_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = ("--data-dir", str(data_dir))
    code, out, _ = run(capsys, "migrate", *d)
    assert code == 0 and out.startswith("database at revision ") and "None" not in out
    code, out, err = run(capsys, "keys", "create", "--role", "admin", *d)
    assert code == 0 and "created key 1: role admin" in err
    key = out.strip()
    assert len(key) >= 20 and key not in err  # the key goes to stdout only
    code, out, _ = run(capsys, "keys", "list", *d)
    assert code == 0 and " 1  admin" in out and key not in out
    assert run(capsys, "keys", "revoke", "1", *d)[:2] == (0, "revoked key 1\n")
    code, _, err = run(capsys, "keys", "revoke", "1", *d)
    assert code == 1 and "no active key 1" in err
    assert "revoked" in run(capsys, "keys", "list", "--all", *d)[1]
    assert not (data_dir / "vectors").exists()  # the vector store was never opened


def test_ingest_reconcile_and_reindex_share_one_wiring(
        tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ("--data-dir", str(data_dir))
    file = make_catalog(tmp_path / "src", 6)
    code, out, _ = run(capsys, "ingest", *d, str(file))
    assert code == 0
    assert "6 lines: 6 new or changed, 0 unchanged, 0 skipped" in out
    assert "indexed 6 products (6 vectors), 0 removed, 0 unreadable images" in out
    code, out, _ = run(capsys, "ingest", *d, str(file))
    assert code == 0 and "6 unchanged" in out and "index is up to date" in out

    code, out, _ = run(capsys, "reconcile", *d)
    assert code == 0 and out.strip().endswith(": 0 differences")

    code, out, _ = run(capsys, "reindex", *d)
    assert code == 0 and "is already built by fake.v1; nothing to do" in out
    code, _, err = run(capsys, "reindex", "--model", "other.v2", *d)
    assert code == 2 and "configured encoder is model version 'fake.v1'" in err


def test_ingest_reports_a_missing_file(data_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ingest", "--data-dir", str(data_dir), str(data_dir / "no.jsonl"))
    assert code == 2 and "not found" in err


@pytest.mark.slow  # two calibrations with local-feature verification of ~200 listings
def test_ingest_refreshes_a_stale_match_calibration_and_calibrate_runs_on_demand(
        tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    d = ("--data-dir", str(data_dir))
    code, out, _ = run(capsys, "ingest", *d, str(make_catalog(tmp_path / "src", 12)))
    assert code == 0 and "match calibration written to" in out and "12 items" in out
    code, out, _ = run(capsys, "calibrate", *d)
    assert code == 0 and "up to date at catalog version" in out and "nothing to do" in out
    code, out, _ = run(capsys, "calibrate", "--force", "--items", "11", "--json", *d)
    report = json.loads(out)
    assert code == 0 and report["items"] == 11 and report["skipped_images"] == 0
    assert set(report["conditions"]) == {"easy", "hard"}
