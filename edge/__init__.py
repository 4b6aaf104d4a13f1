"""lungwatch device package: everything that runs at the bedside.

Owns the shared contracts (feature spec and front end, configuration, audio input).
Never imports torch.
"""

__version__ = "0.1.0"
