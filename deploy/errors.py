"""Typed deploy errors: each message is one line that names what failed and where."""

from __future__ import annotations

from lungwatch.errors import LungwatchError


class DeployError(LungwatchError):
    """Base class of the errors the workstation-side deploy commands report."""


class BundleError(DeployError):
    """The bundle cannot be built (a model whose sha256 differs, a failed wheel build, ...)."""


class HealthError(DeployError):
    """The service did not report ``online`` on the broker in time."""
