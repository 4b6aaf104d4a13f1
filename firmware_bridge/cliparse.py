"""The argument parser of every ``lungwatch`` command: a refused argument is one line.

argparse prints the whole usage block before its error; on a device log or in a script that
is noise around the one line that matters. :class:`ArgumentParser` prints
``lungwatch <command>: error: <what> (see lungwatch <command> --help)`` and exits with status
2, as argparse does. It lives here because firmware_bridge is the package with no
dependencies: edge, training, export and bench import it from here.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
