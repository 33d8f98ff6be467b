"""The ``graphopt`` command's entry point (``graphopt`` and ``python -m graphopt``).

It imports the command line only once running, so that Ctrl-C while onnxruntime and onnx load exits 130 with one
line, like Ctrl-C at any later moment.
"""

from __future__ import annotations

import signal
import sys

__all__ = ["main"]


def _terminated_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("graphopt: terminated\n")
    raise SystemExit(143)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated_while_starting)  # the command installs its own once running
    try:
        from graphopt.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("graphopt: interrupted\n")
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
