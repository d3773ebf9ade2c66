"""What every command line of the extension shares: a failure is one line on standard error and exit status 1.

argparse prints its usage and exits with status 2 on a bad argument; :class:`ArgumentParser` prints
``error: <why>`` alone and exits with 1, like every other failure of our commands. :func:`one_line` folds a
multi-line message (an export's list of problems) into one line.

Example::

    >>> import contextlib, io
    >>> parser = ArgumentParser(prog="demo")
    >>> _ = parser.add_argument("--threads", type=int)
    >>> with contextlib.redirect_stderr(io.StringIO()) as errors:
    ...     try:
    ...         parser.parse_args(["--threads", "many"])
    ...     except SystemExit as exit:
    ...         print(exit.code)
    1
    >>> errors.getvalue()
    "error: argument --threads: invalid int value: 'many'\\n"
    >>> one_line("export stopped: 2 problem(s)\\n  case 'a': empty\\n  case 'b': missing")
    "export stopped: 2 problem(s); case 'a': empty; case 'b': missing"
"""

from __future__ import annotations

import argparse


def one_line(message: str) -> str:
    """``message`` with its lines joined by "; " (surrounding spaces and empty lines dropped)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``error: ...``) and exit status 1; its
    subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(1, f"error: {one_line(message)}\n")
