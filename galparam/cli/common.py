"""What every console script shares: one-line errors with exit status 2 in the console's words,
subcommands with the old spellings kept, the common options, and a quiet TensorFlow start-up."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from galparam.errors import GalparamError
from galparam.settings import TYPE_NAMES, Setting, check_setting

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line: ``prog: error: ... (see prog --help)``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def flag_names(parser: argparse.ArgumentParser) -> dict:
    """Argument name → its console flag (``n_images`` → ``--n-images``), over every subcommand.

    The library names its arguments in errors (:class:`~galparam.errors.GalparamError`); the console
    shows these flags instead.
    """
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags.update(flag_names(sub))
        elif action.option_strings:
            longest = max(action.option_strings, key=len)
            flags.setdefault(action.dest, longest)
        elif action.dest not in ("help", argparse.SUPPRESS):
            flags.setdefault(action.dest, action.metavar or action.dest.upper())
    return flags


def run(main, argv=None, *, prog: str = "galparam", parser: argparse.ArgumentParser | None = None) -> int:
    """Call ``main(argv)``; report a :class:`GalparamError` on one line and return 2.

    The error names arguments by the flags of ``parser`` (default: ``build_parser()`` of the
    module that defines ``main``).
    """
    try:
        return main(argv) or 0
    except GalparamError as exc:
        if parser is None:
            build = getattr(sys.modules.get(main.__module__), "build_parser", None)
            parser = build() if build is not None else None
        message = exc.render(flag_names(parser) if parser is not None else None)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def default_subcommand(argv, commands, default: str) -> list:
    """``argv`` with ``default`` put first when it starts with none of ``commands`` (the spelling
    from before the subcommand existed: ``galparam-simulate SPEC.yaml`` means ``... run SPEC.yaml``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help"):
        return [default, *argv]
    return argv


def add_overwrite(parser: argparse.ArgumentParser, what: str, *aliases: str) -> None:
    """``--overwrite``: the one word for "replace what is there" (``aliases``: former spellings)."""
    parser.add_argument("--overwrite", *aliases, dest="overwrite", action="store_true", help=what)


def add_jobs(parser: argparse.ArgumentParser, what: str = "worker processes") -> None:
    """``--jobs``, default every core the process may use."""
    parser.add_argument("--jobs", type=positive_int, help=f"{what} (default: all cores)")


def load_tensorflow_quietly() -> None:
    """Import TensorFlow (and Keras) with their C++ start-up lines kept off the terminal.

    TensorFlow's absl logging prints several lines (oneDNN, CUDA stubs, CPU features) straight to
    file descriptor 2 at import, whatever ``TF_CPP_MIN_LOG_LEVEL``; they are not the user's
    business. Call it once the inputs are known to be good, before anything imports Keras.
    """
    # unset, or JAX's "1" (JAX sets it when imported, and processes it starts inherit it): quiet
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") in (None, "", "1"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.suppress(ImportError):
                import keras  # noqa: F401
                import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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


def setting_type(name: str, setting: Setting):
    """argparse type of a declared setting (:mod:`galparam.settings`): its type, range and choices
    checked at parse time, so the error names the flag."""

    def parse(text: str):
        try:
            value = setting.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {TYPE_NAMES[setting.type]}") from None
        try:
            return check_setting("", name, value, setting)
        except GalparamError as exc:
            raise argparse.ArgumentTypeError(exc.message.split(": ", 2)[-1]) from None

    return parse


positive_int = _int_at_least(1, "at least 1")
"""argparse type: a whole number ≥ 1."""

nonnegative_int = _int_at_least(0, "0 or more")
"""argparse type: a whole number ≥ 0."""
