"""Opening a record store database: the SQLAlchemy engine (SQLite tuned for one writer process with
threads, or any server URL) and the Alembic migrations shipped in this package, run programmatically."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from defectlab.errors import BadInputError, ConfigError

HEAD = "0002"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver installed with defectlab)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        raise ConfigError(
            f"not a database URL: '{url}' (give a folder for SQLite or e.g. postgresql://user@host/db)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across a process kill (WAL)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=8)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"no database driver for '{parsed.drivername}': {exc}") from None


def _alembic_config(connection):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("defectlab.records") / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head", *, where: str | Path = "record store") -> None:
    """Bring the schema to ``revision`` (creates it on an empty database). Refuses a newer schema."""
    from alembic import command

    try:
        rev = current_revision(engine)
        if rev is not None and rev > HEAD:
            raise ConfigError(
                f"{where}: schema revision {rev} is newer than this defectlab knows ({HEAD}); "
                "upgrade defectlab"
            )
        if rev == HEAD and revision == "head":
            return
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
    except SQLAlchemyError as exc:
        raise BadInputError(where, f"cannot open or migrate the record store ({_short(exc)})") from None


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
