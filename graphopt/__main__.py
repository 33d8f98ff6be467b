"""``python -m graphopt`` is the ``graphopt`` command."""

from __future__ import annotations

import sys

from graphopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
