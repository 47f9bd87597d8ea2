"""A throwaway PostgreSQL server for the record-store tests and benchmark: Debian's ``postgresql``
package, ``initdb`` + ``pg_ctl`` in a temp dir on a free 127.0.0.1 port (as the ``postgres`` user when
running as root: initdb refuses root). ``postgres_server()`` yields a base URL, or None where it
cannot be installed or started (callers skip). Holds no tests itself."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from tests.test_inspect_fixtures import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextmanager
def postgres_server() -> Iterator[str | None]:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        yield None
        return
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            yield None
            return
    root = tempfile.mkdtemp(prefix="defectlab-pg-")
    data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
    os.mkdir(sock)
    if os.geteuid() == 0:
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = free_port()
    started = False
    try:
        r = subprocess.run(
            _as_postgres([initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            yield None
            return
        r = subprocess.run(
            _as_postgres(
                [
                    pg_ctl,
                    "-D",
                    data,
                    "-l",
                    os.path.join(root, "log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port} -k {sock} -h 127.0.0.1 -c fsync=on -c max_connections=100",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=90,
        )
        if r.returncode != 0:
            yield None
            return
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        if started:
            subprocess.run(
                _as_postgres([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def create_database(base: str, name: str) -> str:
    """A fresh database on the server at ``base``; returns its URL."""
    import psycopg

    with psycopg.connect(
        base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"
