"""A history of bench reports in a database: one run per report, one line per row (SPEC section 4).

A path is an SQLite file (created with its folder on the first append); anything with "://" is an
SQLAlchemy URL, so that a team can share one server (`postgresql://` means psycopg 3, the driver
that `pip install 'rnnc[postgres]'` brings). Tables, SQLAlchemy Core:
- `rnnc_meta`: key/value, `schema_version` (a newer one than this rnnc reads is refused);
- `rnnc_runs`: one per appended report, with what decides whether two runs compare (revision,
  target, threads, CPU, the calibration workload's median) and the whole report as JSON, so that
  nothing a later rnnc wants to look at is lost;
- `rnnc_rows`: the report's rows, the numbers a trend needs as columns (median, quartiles, cv),
  and the row's `mode` (`stream`; NULL for a plain row), part of its key as in report.json.

Schema versions: 1, the first; 2 adds `rnnc_rows.mode`; 3 adds `rnnc_rows.machine`, the machine
class of a row measured on a fleet (`rnnc bench --cluster`), part of its key, so that a row is
judged against its own class's runs only. An older history is read as it is (its rows are plain,
of one machine) and upgraded in place by the next append, in the append's transaction. A fleet's
`--threads all` (every core of each node) is recorded as threads 0.

Each append is one transaction: a killed bench leaves the run recorded or absent, never half of
it (SQLite's DDL included: the driver's own implicit transactions are switched off for that).
An SQLite file that holds other tables and no rnnc history is refused rather than written into; a
server's database may hold other tables beside the `rnnc_` ones. Everything a user can get wrong
(a file that is no database, an unreachable server, a missing driver, a report that is not a
finished rnnc report) is one `UserError` line, never a traceback.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from rnnc import stats
from rnnc.errors import UserError
from rnnc.records.report import RowKey, key_of, upgrade, validate_report

SCHEMA_VERSION = 3
ALL_THREADS = 0  # `threads: "all"` of a fleet report: every core of the node that ran each row
POSTGRES_EXTRA = "pip install 'rnnc[postgres]'"
CONNECT_TIMEOUT_S = 3
_LOCK_KEY = 0x726E6E63  # "rnnc": the advisory lock appends to a PostgreSQL history take in turn

_metadata = sa.MetaData()
_meta = sa.Table("rnnc_meta", _metadata,
                 sa.Column("key", sa.String(64), primary_key=True),
                 sa.Column("value", sa.String(255), nullable=False))
_runs = sa.Table("rnnc_runs", _metadata,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                 sa.Column("recorded_at", sa.String(32), nullable=False),  # UTC, ISO 8601
                 sa.Column("revision", sa.String(255)),
                 sa.Column("target", sa.String(32), nullable=False),
                 sa.Column("threads", sa.Integer),
                 sa.Column("cpu", sa.String(255)),
                 sa.Column("calibration_ms", sa.Float),
                 sa.Column("calibration_workload", sa.String(255)),
                 sa.Column("report", sa.Text, nullable=False))
_rows = sa.Table("rnnc_rows", _metadata,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                 sa.Column("run_id", sa.Integer, sa.ForeignKey("rnnc_runs.id"), nullable=False, index=True),
                 sa.Column("model", sa.String(255), nullable=False),
                 sa.Column("fingerprint", sa.String(255)),
                 sa.Column("backend", sa.String(255), nullable=False),
                 sa.Column("batch_size", sa.Integer, nullable=False),
                 sa.Column("seq_len", sa.Integer, nullable=False),
                 sa.Column("precision", sa.String(16), nullable=False),
                 sa.Column("status", sa.String(16), nullable=False),
                 sa.Column("median_ms", sa.Float),
                 sa.Column("q1_ms", sa.Float),
                 sa.Column("q3_ms", sa.Float),
                 sa.Column("cv", sa.Float),
                 sa.Column("n_samples", sa.Integer, nullable=False),
                 sa.Column("mode", sa.String(16)),  # schema 2: "stream"; NULL for a plain row
                 sa.Column("machine", sa.String(255)),  # schema 3: the row's machine class on a fleet; NULL else
                 sa.Index("ix_rnnc_rows_key", "model", "backend", "batch_size", "seq_len"))
_TABLES = {t.name for t in _metadata.sorted_tables}
# drivers SQLAlchemy may ask for, and the package that brings each
_DRIVERS = {"psycopg": POSTGRES_EXTRA, "psycopg2": f"pip install psycopg2-binary, or use postgresql+psycopg:// "
            f"and {POSTGRES_EXTRA}", "MySQLdb": "pip install mysqlclient", "pymysql": "pip install PyMySQL"}


@dataclass(frozen=True)
class HistoryRow:
    """One row of one run; the timings are None when it did not run (`status` says why not)."""

    model: str
    backend: str
    batch_size: int
    seq_len: int
    precision: str
    status: str
    median_ms: float | None
    q1_ms: float | None
    q3_ms: float | None
    cv: float | None
    n_samples: int
    mode: str | None = None  # "stream" for a stream row, as report.json's rows
    machine: str | None = None  # the machine class of a fleet's row, as report.json's rows

    @property
    def key(self) -> RowKey:
        return key_of(self.model, self.backend, self.batch_size, self.seq_len, self.mode, self.machine)


@dataclass(frozen=True)
class HistoryRun:
    """One appended report: `run_id` numbers the runs in the order they were recorded (1, 2, ...
    in a fresh SQLite history; a server may skip a number after a failed append), and
    `fingerprints` maps each model to the fingerprint it ran with."""

    run_id: int
    recorded_at: str
    revision: str | None
    target: str
    threads: int | str | None  # "all": a fleet's every core of each node
    cpu: str | None
    calibration_ms: float | None
    fingerprints: dict[str, str]
    rows: tuple[HistoryRow, ...]

    def row(self, key: RowKey) -> HistoryRow | None:
        return next((r for r in self.rows if r.key == key), None)


def append(history: str, report: dict[str, Any], *, recorded_at: datetime | None = None) -> int:
    """Record a finished report as the history's newest run; returns its run id. The history is
    created on the first append. `recorded_at` (default now) is stored in UTC."""
    report = _finished(report)
    when = (recorded_at or datetime.now(timezone.utc))
    when = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    env = report.get("environment") if isinstance(report.get("environment"), dict) else {}
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    calibration = report["calibration"]
    calibration_ms = calibration.get("median_ms")
    if calibration_ms is None and calibration.get("samples_ms"):
        calibration_ms = stats.median(calibration["samples_ms"])
    threads = (report.get("settings") or {}).get("threads")
    run = {"recorded_at": when.isoformat(timespec="seconds"),
           "revision": _text(env.get("revision") or env.get("git")),
           "target": str(report["target"]),
           "threads": threads if isinstance(threads, int) else ALL_THREADS if threads == "all" else None,
           "cpu": _text(cpu.get("model")), "calibration_ms": calibration_ms,
           "calibration_workload": _text(calibration.get("workload")),
           "report": json.dumps(report, default=str)}
    fingerprints = {name: _text(m.get("fingerprint")) for name, m in report["models"].items()
                    if isinstance(m, dict)}
    rows = [{"model": r["model"], "fingerprint": fingerprints.get(r["model"]), "backend": r["backend"],
             "batch_size": int(r["batch_size"]), "seq_len": int(r["seq_len"]),
             "precision": r.get("precision", "fp32"), "status": r["status"],
             "median_ms": r.get("median_ms"), "q1_ms": r.get("q1_ms"), "q3_ms": r.get("q3_ms"),
             "cv": r.get("cv"),
             "n_samples": 0 if r.get("has_samples") is False else len(r.get("samples_ms") or []),
             "mode": r.get("mode"), "machine": r.get("machine")}
            for r in report["rows"]]
    with _session(history, write=True) as (conn, where, sqlite):
        if conn.dialect.name == "postgresql":  # one append at a time: two first ones would both create
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        _check_schema(conn, where, sqlite, create=True)
        run_id = int(conn.execute(_runs.insert().values(**run)).inserted_primary_key[0])
        if rows:
            conn.execute(_rows.insert(), [dict(r, run_id=run_id) for r in rows])
    return run_id


def check_reachable(history: str) -> None:
    """Refuse, before a long bench, a history that `append` would refuse after it: an unknown URL,
    a missing driver, a server that does not answer, a database or file of something else.
    A path that does not exist yet is fine (the append creates it); nothing is written."""
    file = _sqlite_file(_url(history)) if "://" in history else Path(history).expanduser()
    if file is not None and not file.exists():
        return
    with _session(history, write=False) as (conn, where, sqlite):
        _check_schema(conn, where, sqlite, create=True, dry_run=True)


def load(history: str, model: str | None = None) -> list[HistoryRun]:
    """Every run of the history, oldest first; with `model`, only the runs that have rows of that
    model, and only those rows. An empty history is an empty list."""
    with _session(history, write=False) as (conn, where, sqlite):
        version = _check_schema(conn, where, sqlite, create=False)
        skip = {"id"} | ({"mode"} if version < 2 else set()) | ({"machine"} if version < 3 else set())
        query = sa.select(*[c for c in _rows.c if c.name not in skip]).order_by(_rows.c.run_id, _rows.c.id)
        if model is not None:
            query = query.where(_rows.c.model == model)
        by_run: dict[int, list[sa.Row[Any]]] = {}
        for r in conn.execute(query):
            by_run.setdefault(r.run_id, []).append(r)
        if model is not None and not by_run:
            models = sorted(conn.execute(sa.select(_rows.c.model).distinct()).scalars())
            if models:
                raise UserError(f"{where}: no run of model {model!r} (the history has {', '.join(models)})")
        runs = conn.execute(sa.select(*[c for c in _runs.c if c.name != "report"]).order_by(_runs.c.id)).all()
    found = []
    for run in runs:
        rows = by_run.get(run.id, [])
        if model is not None and not rows:
            continue
        found.append(HistoryRun(
            run_id=run.id, recorded_at=run.recorded_at, revision=run.revision, target=run.target,
            threads="all" if run.threads == ALL_THREADS else run.threads, cpu=run.cpu,
            calibration_ms=run.calibration_ms,
            fingerprints={r.model: r.fingerprint for r in rows if r.fingerprint is not None},
            rows=tuple(HistoryRow(r.model, r.backend, r.batch_size, r.seq_len, r.precision, r.status, r.median_ms,
                                  r.q1_ms, r.q3_ms, r.cv, r.n_samples, getattr(r, "mode", None),
                                  getattr(r, "machine", None))
                       for r in rows)))
    return found


def keys(runs: list[HistoryRun]) -> list[RowKey]:
    """Every row key of the runs, in the order they first appear."""
    return list(dict.fromkeys(r.key for run in runs for r in run.rows))


def series(runs: list[HistoryRun], key: RowKey) -> list[tuple[HistoryRun, HistoryRow]]:
    """One row's points over the runs in which it ran, oldest first."""
    points = []
    for run in runs:
        row = run.row(key)
        if row is not None and row.status == "ok" and row.median_ms is not None and row.median_ms > 0:
            points.append((run, row))
    return points


def describe(history: str) -> str:
    """The history as messages name it: the path, or the URL without its password."""
    if "://" not in history:
        return history
    try:
        return sa.engine.make_url(history).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return history


def _finished(report: Any) -> dict[str, Any]:
    report = upgrade(report)
    problems = validate_report(report)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"cannot record the report in a history: {problems[0]}{more}")
    if report.get("finished") is not True:
        raise UserError("cannot record the report in a history: it is not finished (an interrupted bench: "
                        "finish it with --resume first)")
    return report


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _url(history: str) -> sa.engine.URL:
    try:
        url = sa.engine.make_url(history)
    except sa_exc.ArgumentError:
        raise UserError(f"{history}: not a database URL (expected e.g. postgresql://user@host/db, "
                        "or a file path for SQLite)") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3: what rnnc[postgres] installs
    return url


def _sqlite_file(url: sa.engine.URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def _engine(history: str, write: bool) -> tuple[sa.engine.Engine, str, bool]:
    """The engine for a path or URL, how messages name it, and whether it is SQLite."""
    where = describe(history)
    if "://" in history:
        url = _url(history)
    else:
        url = sa.engine.URL.create("sqlite+pysqlite", database=str(Path(history).expanduser()))
    sqlite = url.get_backend_name() == "sqlite"
    path = _sqlite_file(url)
    if path is not None:
        if path.is_dir():
            raise UserError(f"{where}: is a directory, not a history file")
        if not path.exists():
            if not write:
                raise UserError(f"no history at {where}: `rnnc bench ... --history {where}` creates it")
            path.parent.mkdir(parents=True, exist_ok=True)
    connect_args = {}
    if url.get_backend_name() in ("postgresql", "mysql"):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    except sa_exc.NoSuchModuleError:
        raise UserError(f"{where}: no SQLAlchemy dialect for {url.drivername!r}: give a file path (SQLite) or a "
                        f"URL such as postgresql://user@host/db ({POSTGRES_EXTRA})") from None
    except ImportError as err:
        module = err.name or str(err)
        hint = _DRIVERS.get(module.partition(".")[0], f"install the package that provides {module!r}")
        raise UserError(f"{where}: the database driver {module!r} is not installed: {hint}") from None
    if sqlite:
        _own_transactions(engine, "BEGIN IMMEDIATE" if write else "BEGIN")
    return engine, where, sqlite


def _own_transactions(engine: sa.engine.Engine, begin: str) -> None:
    """pysqlite opens transactions itself, and not before DDL; SQLAlchemy's recipe hands them to us
    so that creating the tables and the first run are one transaction. An append begins
    IMMEDIATE: it takes the write lock first and waits for another writer instead of failing."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.engine.Connection) -> None:
        conn.exec_driver_sql(begin)


@contextmanager
def _session(history: str, write: bool) -> Iterator[tuple[sa.engine.Connection, str, bool]]:
    """One connection and one transaction (committed when the block ends without an error); a
    database error a user can cause becomes one `UserError` line."""
    engine, where, sqlite = _engine(history, write)
    try:
        try:
            conn = engine.connect()
        except sa_exc.DBAPIError as err:
            raise UserError(_problem(err, where, sqlite, connecting=True)) from None
        with conn:
            try:
                with conn.begin():
                    yield conn, where, sqlite
            except sa_exc.DBAPIError as err:
                raise UserError(_problem(err, where, sqlite, connecting=False)) from None
    finally:
        engine.dispose()


def _problem(err: sa_exc.DBAPIError, where: str, sqlite: bool, connecting: bool) -> str:
    lines = [line.strip() for line in str(err.orig).splitlines() if line.strip()]
    reason = lines[0] if lines else type(err.orig).__name__
    if sqlite:
        if "not a database" in reason:
            return f"{where}: not an SQLite database ({reason})"
        return f"{where}: cannot use the SQLite file ({reason})"
    if connecting or isinstance(err, sa_exc.OperationalError) and "connection" in reason.lower():
        return f"cannot connect to {where}: {reason}"
    return f"{where}: {reason}"


def _check_schema(conn: sa.engine.Connection, where: str, sqlite: bool, create: bool,
                  dry_run: bool = False) -> int:
    """The schema version of the history; refuse a database that holds no rnnc history (or one of
    a newer schema). With `create` (an append), make the tables in an empty one, or upgrade an
    older one to this version (in this transaction; neither with `dry_run`)."""
    tables = set(sa.inspect(conn).get_table_names())
    if "rnnc_meta" in tables:
        version = conn.execute(sa.select(_meta.c.value).where(_meta.c.key == "schema_version")).scalar()
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise UserError(f"{where}: its rnnc_meta table has no schema version: not an rnnc history") from None
        if version > SCHEMA_VERSION:
            raise UserError(f"{where}: history schema version {version} is newer than this rnnc reads "
                            f"({SCHEMA_VERSION}): upgrade rnnc")
        if not _TABLES <= tables:
            raise UserError(f"{where}: an rnnc history without its tables {', '.join(sorted(_TABLES - tables))}")
        if create and not dry_run and version < SCHEMA_VERSION:
            _upgrade(conn, version)
            version = SCHEMA_VERSION
        return version
    ours = sorted(tables & _TABLES)
    if ours or not create or (sqlite and tables):
        held = f" (it has {_few(sorted(tables))})" if tables else ""
        hint = "; give a new file" if sqlite and create else ""
        raise UserError(f"{where}: holds no rnnc history{held}{hint}")
    if dry_run:
        return SCHEMA_VERSION
    _metadata.create_all(conn)
    conn.execute(_meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
    return SCHEMA_VERSION


def _upgrade(conn: sa.engine.Connection, version: int) -> None:
    """An older history's tables brought to `SCHEMA_VERSION`, one version at a time."""
    if version < 2:
        conn.execute(sa.text("ALTER TABLE rnnc_rows ADD COLUMN mode VARCHAR(16)"))
    if version < 3:
        conn.execute(sa.text("ALTER TABLE rnnc_rows ADD COLUMN machine VARCHAR(255)"))
    conn.execute(_meta.update().where(_meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))


def _few(names: list[str], n: int = 3) -> str:
    return "tables " + ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
