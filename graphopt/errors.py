"""The exceptions graphopt raises for user mistakes and pass failures.

Each kind of user mistake has its own type so that the CLI can catch them once, print one line and exit with the
code documented in the README. Anything that is not a ``GraphoptError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "GraphoptError",
    "ModelIOError",
    "OutputPathError",
    "PassError",
    "PipelineError",
    "PreconditionError",
    "ToleranceError",
    "UnsupportedModelError",
    "UsageError",
    "ValidationSetupError",
    "first_line",
]


class GraphoptError(Exception):
    """Base class of every error graphopt reports to the user as one line."""

    exit_code: int = 1


class UsageError(GraphoptError):
    """The call itself is wrong: a parameter outside its range, or options that contradict each other."""

    exit_code = 2


class PipelineError(UsageError):
    """An unknown pass name, a malformed pipeline string, a bad pass option, or lossy passes without real data."""


class ToleranceError(UsageError):
    """A tolerance or budget that is not a number in its range (NaN, a cosine outside [0, 1], a negative atol):
    such a value would silently disable the check it sets."""


class OutputKindError(UsageError):
    """An output kind named by the user (``--output-kind NAME=KIND``) that is malformed or names no output."""


class ModelIOError(GraphoptError):
    """The model file cannot be read: missing, truncated, not ONNX, or unsafe external data."""

    exit_code = 3


class UnsupportedModelError(ModelIOError):
    """The model is valid ONNX but outside what graphopt and onnxruntime support (e.g. its opset)."""


class OutputPathError(GraphoptError):
    """An output path would overwrite an input (the model, its external data, data or label files) or another
    output, or cannot be written."""

    exit_code = 4


class DataError(GraphoptError):
    """The validation data does not match the model's inputs (names, dtypes, ranks, shapes, sample count)."""

    exit_code = 5


class ValidationSetupError(UsageError):
    """``graphopt validate`` was asked for something it cannot do: an unknown metric or shift hook, a fold count
    the data cannot fill, models whose inputs or outputs differ."""


class PassError(GraphoptError):
    """A pass could not run; the manager reports it as failed and keeps the model before the pass."""


class PreconditionError(PassError):
    """The model does not meet what a pass requires; recorded as a skip, not a failure."""


class CalibrationError(PreconditionError):
    """onnxruntime could not run the model to collect a pass's calibration activations: the pass is skipped with
    the reason, or goes on without what it wanted to measure where it can."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for one-line error reports about third-party failures."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]
