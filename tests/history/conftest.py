"""A real PostgreSQL server for the history's tests: initdb into a fresh folder, pg_ctl start on a
free 127.0.0.1 port, one database; stopped and removed when the session ends.

The server binaries are looked for on PATH, then in /usr/lib/postgresql/*/bin (newest first).
PostgreSQL refuses to run as root: as root, the folder is given to the `postgres` user and every
server command runs through `runuser -u postgres --`. Tests that use the server carry
`@pytest.mark.xdist_group("postgres")`, so that under `--dist loadgroup` one worker starts it once.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


def postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    on_path = shutil.which("pg_ctl")
    folders = ([Path(on_path).resolve().parent] if on_path else []) + \
        [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)]
    for folder in folders:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _version(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """`postgresql+psycopg://rnnc@127.0.0.1:PORT/rnnc_history` on a server of this session's own."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'rnnc[postgres]')")
    folder = postgres_bin()
    if folder is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="rnnc-pg-"))  # under /tmp: pytest's own tmp is root's only
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and there is no `runuser` to run the server as `postgres`")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run(as_user + list(args), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}")

    try:
        run(str(folder / "initdb"), "-D", str(data), "-U", "rnnc", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(folder / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off", "start")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="rnnc", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE rnnc_history")
            conn.execute("CREATE DATABASE rnnc_other")
            conn.execute("CREATE DATABASE rnnc_race")
        yield f"postgresql+psycopg://rnnc@127.0.0.1:{port}/rnnc_history"
    finally:
        subprocess.run(as_user + [str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
