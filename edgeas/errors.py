"""One error hierarchy: the CLI prints the message and the hint, never a traceback."""

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
    """A config file, preset or command-line value is wrong."""

    exit_code = 2


class DataError(EdgeasError):
    """A data folder is missing, malformed or holds unreadable files."""

    exit_code = 2


class DependencyError(EdgeasError):
    """An optional package needed for this command is not installed."""


class ArtifactError(EdgeasError):
    """A checkpoint, ONNX file or engine is unreadable, unsafe or inconsistent."""


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
