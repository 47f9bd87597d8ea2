"""``defectlab-runtime``: ``inspect`` and ``serve`` with the ONNX engine, without torch (the runtime install,
``pip install defectlab``; docs/serving.md). The same commands and options as ``defectlab inspect`` /
``defectlab serve`` (the same functions), with ``--engine onnx`` as the default."""

from __future__ import annotations

import sys
from functools import partial

from defectlab.cli import inference_app, run

HELP = ("Inspect images and serve a model exported with 'defectlab export onnx RUN' (ONNX Runtime, no "
        "torch). Training and every other command: the full install, pip install 'defectlab[full]'.")


def main(argv: list[str] | None = None) -> int:
    return run(partial(inference_app, "defectlab-runtime", HELP, "onnx"), argv)


if __name__ == "__main__":
    sys.exit(main())
