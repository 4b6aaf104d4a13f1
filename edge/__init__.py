"""lungwatch device package: everything at the bedside, and the contracts training shares
(feature spec and front end, configuration, audio input). Never imports torch."""

__version__ = "0.1.0"
