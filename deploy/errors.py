"""Typed deploy errors: each message is one line that names what failed and where."""

from __future__ import annotations

from edge.errors import ConfigError, LungwatchError


class DeployError(LungwatchError):
    """Base class of the errors ``make deploy`` reports."""


class UnknownDeviceError(DeployError):
    """``DEVICE`` names no inventory file (the message lists the known ones)."""


class InventoryError(DeployError, ConfigError):
    """An inventory file is unreadable or invalid (the message names the file and the key)."""


class BundleError(DeployError):
    """The bundle cannot be built (a model whose sha256 differs, a failed wheel build, ...)."""


class TargetError(DeployError):
    """A command on the target (or a copy to it) failed; the message names the command."""


class HealthError(DeployError):
    """The service did not report ``online`` on the broker in time."""


class StepError(DeployError):
    """A deploy step failed: ``step`` is its name, the message says why and what was restored."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
