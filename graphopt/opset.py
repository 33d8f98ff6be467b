"""Opset upgrades for passes whose rewrite needs a newer opset than the model's (per-axis QuantizeLinear, …).

``ensure_opset`` upgrades only when asked, and returns a note saying so for the pass's report.
"""

from __future__ import annotations

import logging

import onnx
from onnx import version_converter

from graphopt.errors import PassError, first_line
from graphopt.graph import default_opset

__all__ = ["ensure_opset"]

log = logging.getLogger(__name__)


def ensure_opset(model: onnx.ModelProto, minimum: int) -> tuple[onnx.ModelProto, str]:
    """``model`` at default-domain opset ``minimum`` or newer, and a note saying whether it was upgraded.

    Raises ``PassError`` when onnx's version converter cannot upgrade the model.
    """
    current = default_opset(model)
    if current >= minimum:
        return model, ""
    try:
        upgraded = version_converter.convert_version(model, minimum)
    except Exception as e:  # the converter raises bare RuntimeErrors and more for unsupported adapters
        raise PassError(f"cannot upgrade opset {current} to {minimum}: {first_line(e)}") from e
    log.info("upgraded opset %d to %d", current, minimum)
    return upgraded, f"opset upgraded from {current} to {minimum}"
