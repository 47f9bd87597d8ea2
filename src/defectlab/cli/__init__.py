"""The ``defectlab`` command. Thin: parses options, builds configs, calls the packages.

Each verb lives in its own module of this package and is added to ``app`` below.
"""

from __future__ import annotations

import logging
import sys

import typer

from defectlab.errors import DefectLabError

app = typer.Typer(
    name="defectlab",
    help="Visual defect inspection: know the data, detect anomalies, classify and localise defects, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from defectlab.cli import anomaly, classify, data, demo, export, inspect, records, segment, serve, verdict

    app.add_typer(data.app, name="data")
    app.add_typer(classify.app, name="classify")
    app.add_typer(anomaly.app, name="anomaly")
    app.add_typer(segment.app, name="segment")
    app.add_typer(export.app, name="export")
    app.add_typer(records.app, name="records")
    app.command("inspect")(inspect.inspect)
    app.command("serve")(serve.serve)
    app.command("demo")(demo.demo)
    app.add_typer(verdict.app, name="bundle")
    app.command("refine")(verdict.refine)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        app(args=argv)  # standalone: typer prints usage errors itself and raises SystemExit
    except DefectLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
