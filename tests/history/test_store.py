"""The history store: reports in and runs out, on SQLite and on a real PostgreSQL server, and one
clear line (exit 2) for everything a user can get wrong."""
from __future__ import annotations

import json
import socket
import sqlite3
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from rnnc import history
from rnnc.errors import UserError
from rnnc.history import store
from tests.reports.synth import report, row, standard

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def _report(i: int, scale: dict[str, float] | None = None) -> dict:
    r = standard(scale, seed=i)
    r["environment"]["git"] = f"rev{i:03d}"
    r["settings"]["threads"] = 4
    return r


def _error(call, *args, **kw) -> str:
    with pytest.raises(UserError) as err:
        call(*args, **kw)
    assert len(err.value.problems) == 1 and "\n" not in err.value.problems[0]
    return err.value.problems[0]


def _round_trip(where: str) -> None:
    ids = [history.append(where, _report(i), recorded_at=T0 + timedelta(days=i)) for i in range(3)]
    other = report([row("torch", 1, 8, 2.0, model="other")], fingerprint="f2")
    other["environment"]["revision"] = "tag-1.0"
    other["environment"]["git"] = "ignored"
    ids.append(history.append(where, other, recorded_at=T0 + timedelta(days=3)))
    assert ids == sorted(ids) and len(set(ids)) == 4
    runs = history.load(where)
    assert [r.run_id for r in runs] == ids
    assert [r.revision for r in runs] == ["rev000", "rev001", "rev002", "tag-1.0"]
    assert runs[0].recorded_at == "2024-03-01T12:00:00+00:00" and runs[0].target == "cpu"
    assert runs[0].threads == 4 and runs[0].cpu == "test cpu" and runs[0].calibration_ms == 5.0
    assert runs[0].fingerprints == {"m": "abc"} and runs[3].fingerprints == {"other": "f2"}
    first = _report(0)["rows"][0]
    got = runs[0].rows[0]
    assert got.key == ("m", first["backend"], first["batch_size"], first["seq_len"])
    assert got.median_ms == pytest.approx(first["median_ms"]) and got.q1_ms == pytest.approx(first["q1_ms"])
    assert got.n_samples == 40 and got.status == "ok" and got.precision == "fp32"
    assert len(history.keys(runs)) == 9  # 8 of model m, 1 of model other
    points = history.series(runs, ("m", "torch", 1, 8))
    assert [run.revision for run, _ in points] == ["rev000", "rev001", "rev002"]
    only = history.load(where, model="other")
    assert [r.run_id for r in only] == ids[3:] and [x.key for x in only[0].rows] == [("other", "torch", 1, 8)]
    assert "no run of model 'nope'" in _error(history.load, where, model="nope")


def test_sqlite_round_trip(tmp_path):
    path = tmp_path / "deep" / "folder" / "history.db"  # created with its folder
    _round_trip(str(path))
    stored = sqlite3.connect(path).execute("SELECT report FROM rnnc_runs ORDER BY id").fetchall()
    assert json.loads(stored[0][0])["environment"]["git"] == "rev000"  # the whole report is kept


def test_sqlite_url_round_trip(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'h.db'}")


def test_rows_that_did_not_run_are_kept_but_not_in_a_series(tmp_path):
    r = _report(0)
    r["rows"].append({"model": "m", "backend": "tvm", "batch_size": 1, "seq_len": 8, "status": "skipped",
                      "reason": "apache-tvm is not installed"})
    history.append(str(tmp_path / "h.db"), r)
    (run,) = history.load(str(tmp_path / "h.db"))
    tvm = run.row(("m", "tvm", 1, 8))
    assert tvm is not None and tvm.status == "skipped" and tvm.median_ms is None and tvm.n_samples == 0
    assert history.series([run], ("m", "tvm", 1, 8)) == []


def test_an_append_is_all_or_nothing(tmp_path, monkeypatch):
    """The run is inserted, then its rows fail: nothing stays, not even the tables of a new file."""
    path = str(tmp_path / "h.db")
    columns = [sa.Column(c.name, c.type) for c in store._rows.c]
    broken = sa.Table("rnnc_rows_that_do_not_exist", sa.MetaData(), *columns)
    monkeypatch.setattr(store, "_rows", broken)
    assert "cannot use the SQLite file (no such table" in _error(history.append, path, _report(0))
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == []
    monkeypatch.undo()
    history.append(path, _report(0))
    assert [len(run.rows) for run in history.load(path)] == [8]


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "h.db"
    path.write_bytes(b"\x00garbage, not sqlite\xff" * 40)
    assert _error(history.load, str(path)) == f"{path}: not an SQLite database (file is not a database)"
    assert _error(history.append, str(path), _report(0)).endswith("not an SQLite database (file is not a database)")


def test_a_database_of_something_else(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    assert "holds no rnnc history (it has tables customers)" in _error(history.load, str(path))
    assert "holds no rnnc history" in _error(history.append, str(path), _report(0))  # not written into
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [("customers",)]
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert "holds no rnnc history" in _error(history.load, str(empty))


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "h.db"
    history.append(str(path), _report(0))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE rnnc_meta SET value = ? WHERE key = 'schema_version'", (str(store.SCHEMA_VERSION + 1),))
    message = _error(history.load, str(path))
    assert f"schema version {store.SCHEMA_VERSION + 1} is newer" in message and "upgrade rnnc" in message
    assert "is newer" in _error(history.append, str(path), _report(1))


def test_missing_history_and_directories(tmp_path):
    missing = tmp_path / "nope.db"
    message = _error(history.load, str(missing))
    assert message.startswith(f"no history at {missing}") and "--history" in message
    assert not missing.exists()  # reading never creates a file
    assert "is a directory" in _error(history.load, str(tmp_path))


def test_unreachable_server_is_one_line_and_quick():
    start = time.monotonic()
    message = _error(history.load, f"postgresql://nobody:secret@127.0.0.1:{_closed_port()}/db")
    assert time.monotonic() - start < 5
    assert message.startswith("cannot connect to postgresql+psycopg://nobody:***@127.0.0.1") or \
        message.startswith("cannot connect to postgresql://nobody:***@127.0.0.1"), message
    assert "secret" not in message and "refused" in message.lower()


def test_unknown_scheme_and_missing_driver(monkeypatch):
    assert "no SQLAlchemy dialect for 'nosuchdb'" in _error(history.load, "nosuchdb://host/db")
    message = _error(history.load, "postgresql+psycopg2://u@127.0.0.1/db")
    assert "'psycopg2' is not installed" in message and "pip install" in message
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    for name in [m for m in sys.modules if m.startswith("sqlalchemy.dialects.postgresql.psycopg")]:
        monkeypatch.delitem(sys.modules, name)
    message = _error(history.append, "postgresql://u@127.0.0.1/db", _report(0))
    assert "'psycopg' is not installed" in message and "pip install 'rnnc[postgres]'" in message
    assert "not a database URL" in _error(history.load, "://nothing")


def test_only_finished_rnnc_reports_are_recorded(tmp_path):
    path = str(tmp_path / "h.db")
    unfinished = _report(0)
    unfinished["finished"] = False
    assert "not finished" in _error(history.append, path, unfinished)
    assert "not an rnnc bench report" in _error(history.append, path, {"rows": []})
    assert "not a JSON object" in _error(history.append, path, ["a", "list"])
    bad = _report(0)
    del bad["rows"][0]["median_ms"]
    assert "rows[0]" in _error(history.append, path, bad)
    assert not (tmp_path / "h.db").exists()  # refused before the database is touched


def _closed_port() -> int:
    """A 127.0.0.1 port that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.xdist_group("postgres")
def test_postgres_round_trip(postgres_url):
    _round_trip(postgres_url)
    message = _error(history.load, postgres_url.replace("rnnc_history", "rnnc_missing"))
    assert message.startswith("cannot connect") and 'database "rnnc_missing" does not exist' in message


@pytest.mark.xdist_group("postgres")
def test_postgres_empty_and_shared_databases(postgres_url):
    other = postgres_url.replace("/rnnc_history", "/rnnc_other")
    assert "holds no rnnc history" in _error(history.load, other)
    engine = sa.create_engine(other)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS customers (name TEXT)")
    engine.dispose()
    run_id = history.append(other.replace("postgresql+psycopg://", "postgresql://"), _report(7))
    (run,) = history.load(other)  # a server's database may hold other tables beside rnnc's
    assert run.run_id == run_id and run.revision == "rev007" and len(run.rows) == 8



def test_check_reachable_refuses_before_a_bench_what_append_would_refuse_after(tmp_path):
    history.check_reachable(str(tmp_path / "new" / "history.db"))  # created by the append, later
    assert not (tmp_path / "new").exists()  # nothing written by the check
    history.check_reachable(f"sqlite:///{tmp_path / 'new.db'}")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not sqlite" * 50)
    assert "not an SQLite database" in _error(history.check_reachable, str(corrupt))
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    assert "holds no rnnc history" in _error(history.check_reachable, str(other))
    assert "is a directory" in _error(history.check_reachable, str(tmp_path))
    unreachable = f"postgresql://u@127.0.0.1:{_closed_port()}/db"
    assert _error(history.check_reachable, unreachable).startswith("cannot connect")
    good = tmp_path / "good.db"
    history.append(str(good), _report(0))
    history.check_reachable(str(good))
    assert len(history.load(str(good))) == 1


@pytest.mark.xdist_group("postgres")
def test_postgres_check_reachable(postgres_url):
    history.check_reachable(postgres_url)
    history.check_reachable(postgres_url.replace("/rnnc_history", "/rnnc_other"))  # a server may share its database


def _concurrent_appends(where: str, workers: int = 4, each: int = 3) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: history.append(where, _report(i)), range(workers * each)))


def test_concurrent_appends_to_a_new_sqlite_file(tmp_path):
    where = str(tmp_path / "h.db")
    ids = _concurrent_appends(where)
    runs = history.load(where)
    assert sorted(ids) == [r.run_id for r in runs] and len(set(ids)) == 12
    assert all(len(r.rows) == 8 for r in runs)


@pytest.mark.xdist_group("postgres")
def test_concurrent_appends_to_a_new_postgres_database(postgres_url):
    where = postgres_url.replace("/rnnc_history", "/rnnc_race")
    ids = _concurrent_appends(where)  # the first appends race to create the tables
    runs = history.load(where)
    assert sorted(ids) == [r.run_id for r in runs] and len(set(ids)) == 12


def test_a_version_1_history_is_read_and_upgraded_by_the_next_append(tmp_path):
    """Schema 2 adds the rows' mode (a stream row's key carries it): a version 1 file reads as
    plain rows, and the next append upgrades it in place."""
    from tests.reports.synth import streamed

    path = tmp_path / "h.db"
    history.append(str(path), _report(0))
    with sqlite3.connect(path) as db:  # what rnnc wrote before schema 2 (and 3)
        db.execute("ALTER TABLE rnnc_rows DROP COLUMN mode")
        db.execute("ALTER TABLE rnnc_rows DROP COLUMN machine")
        db.execute("UPDATE rnnc_meta SET value = '1' WHERE key = 'schema_version'")
    [old] = history.load(str(path))
    assert old.rows[0].mode is None and len(old.rows[0].key) == 4
    stream_report = streamed()
    stream_report["settings"]["threads"] = 4
    history.append(str(path), stream_report)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM rnnc_meta WHERE key = 'schema_version'").fetchone() == ("3",)
    old, new = history.load(str(path))
    assert {r.mode for r in old.rows} == {None} and {r.key[-1] for r in new.rows} == {"stream"}
    assert history.series([old, new], ("m", "torch", 1, 4, "stream"))[0][0] is new
