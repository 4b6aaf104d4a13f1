"""Shared errors; each message names what was wrong (file, key, value): one log line to fix it."""

from __future__ import annotations


class LungwatchError(Exception):
    """Base class of every error lungwatch raises on purpose."""


class ConfigError(LungwatchError, ValueError):
    """A configuration file or value is invalid."""


class AudioError(LungwatchError):
    """Audio could not be read or is not usable."""


class AudioReadError(AudioError, OSError):
    """A file is missing, unreadable or not a supported audio format."""


class EmptyAudioError(AudioError, ValueError):
    """Audio holds no samples."""


class InvalidAudioError(AudioError, ValueError):
    """Audio has the wrong shape or dtype, or holds NaN/Inf."""


class AnnotationError(LungwatchError, ValueError):
    """An annotation file is malformed; the message names the file and the line."""


class FeatureSpecMismatchError(LungwatchError, ValueError):
    """A model was made for a different feature spec than the one configured."""
