"""What every console script shares: one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import sys

from galparam.errors import GalparamError

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line: ``prog: error: ... (see prog --help)``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run(main, argv=None, *, prog: str = "galparam") -> int:
    """Call ``main(argv)``; report a :class:`GalparamError` on one line and return 2."""
    try:
        return main(argv) or 0
    except GalparamError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    return parse


positive_int = _int_at_least(1, "at least 1")
"""argparse type: a whole number ≥ 1."""

nonnegative_int = _int_at_least(0, "0 or more")
"""argparse type: a whole number ≥ 0."""
