"""One error hierarchy: the CLI prints the message and the hint, never a traceback.

Which exit code, by one rule (interfaces.md):

- 2, a usage or configuration error (`ConfigError`; `DataError` for the data set the
  user pointed at): something the user chose is wrong and only they can fix it. A value
  typed on the command line or in a config/station file (an unknown mode, a threshold
  parameter out of range, a batch larger than the model or engine takes), and a file or
  folder named there that does not exist or is not of the kind asked for (a missing
  model, a missing video).
- 1, a failure at run time (every other class): the request was valid but could not
  be carried out. A file that exists but cannot be read or decoded, a camera or stream
  that fails, what a model produced being unusable (`ModelOutputError`), a missing
  optional package.

So the same kind of mistake gets the same code whichever backend or source meets it.
"""

from __future__ import annotations


class EdgeasError(Exception):
    """Base of every error edgeas reports to a user.

    `exit_code` follows the CLI convention: 2 for usage or configuration
    errors, 1 for failures at run time.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class ConfigError(EdgeasError):
    """A config file, preset or command-line value is wrong (or names a missing file)."""

    exit_code = 2


class DataError(EdgeasError):
    """A data folder is missing, malformed or holds unreadable files."""

    exit_code = 2


class DependencyError(EdgeasError):
    """An optional package needed for this command is not installed."""


class ArtifactError(EdgeasError):
    """A checkpoint, ONNX file or engine is unreadable, unsafe or inconsistent."""


class ModelOutputError(ArtifactError):
    """What a model produced is unusable: a map of the wrong shape, NaN or inf values.

    Not a configuration error: the user's settings were valid, the model (or the data
    it was given) produced it, so it is a failure at run time (exit 1).
    """


class CalibrationError(EdgeasError):
    """INT8 calibration could not produce an acceptable model."""


class StreamError(EdgeasError):
    """A camera, video or stream sink failed."""


def require(module: str, package: str, extra: str | None = None):
    """Import `module` lazily; a missing package becomes a DependencyError naming the install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        install = f"pip install 'edgeas[{extra}]'" if extra else f"pip install {package}"
        raise DependencyError(
            f"this command needs the Python package '{package}' (import {module} failed: {exc})",
            hint=f"install it with: {install}",
        ) from exc
