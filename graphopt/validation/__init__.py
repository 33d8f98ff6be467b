"""Validation: the evidence that an optimised model can ship, one section per kind (held-out intervals, k-fold,
shifted inputs, environments, performance). Sections measure and return data (``model``); ``graphopt.validate``
runs them and ``graphopt.report`` renders them."""

from __future__ import annotations

from graphopt.validation.context import ValidationContext
from graphopt.validation.model import SCHEMA, Check, Section, ValidationReport

__all__ = ["SCHEMA", "Check", "Section", "ValidationContext", "ValidationReport"]
