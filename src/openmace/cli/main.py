"""``openmace`` command line: one thin module per subcommand, and the one error boundary.

:func:`main` runs a subcommand and turns every expected failure into ONE line on stderr,
``openmace COMMAND: error: MESSAGE`` (naming the file where the exception carries one), and an
exit code; a Python traceback is printed only with ``--debug`` (before or after the command):

================================================================================  =========
failure                                                                           exit code
================================================================================  =========
bad command-line arguments (argparse's errors; an invalid or unavailable --device)        2
``ValueError``: ``DataError``, ``ModelFileError``, ``ConversionError``, bad options,      2
JSON and text-decoding errors
``OSError``: missing file, permission denied, is a directory, disk full, ...              2
``MemoryError`` (also PyTorch's out-of-memory errors); ``RecursionError`` (input          2
nested too deeply); ``EOFError`` (truncated input)
exceptions of openmace's own classes (``TrainingError``, ``SimulationError``,             2
``WorkDirLocked``, ...); YAML and ASE file-format errors
SIGINT (Ctrl-C)                                                                          130
SIGTERM (a scheduler's time limit), SIGHUP (unless ignored, e.g. by ``nohup``)       143, 129
anything else, a bug: one line ending "run with --debug for the traceback"                  1
================================================================================  =========

The signals are raised in the main thread as ``KeyboardInterrupt`` (:class:`Stopped` for SIGTERM
and SIGHUP), so ``finally`` blocks run and files being written are completed or removed; a
command module may add to the message with ``interrupted(args)`` (``train``: where its last
checkpoint is, and ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import NoReturn

from openmace.allocator import keep_freed_memory
from openmace.cli import (
    convert,
    demo,
    eval,
    export,
    info,
    lammps_plugin,
    md,
    prepare_data,
    train,
)
from openmace.cli.devices import check_device

COMMANDS = {
    "train": train,
    "eval": eval,
    "md": md,
    "demo": demo,
    "convert": convert,
    "export": export,
    "info": info,
    "lammps-plugin": lammps_plugin,
    "prepare-data": prepare_data,
}
# commands that run with malloc keeping freed memory
LONG_RUNNING = ("train", "eval", "md", "prepare-data")
EXIT_ERROR = 2  # an expected failure: bad input, a missing file, not enough memory, ...
EXIT_BUG = 1  # an unexpected exception
STOP_SIGNALS = ("SIGTERM", "SIGHUP")
DEBUG_HELP = "show the Python traceback of an error"
MAX_MESSAGE = 2000  # characters of an error message shown


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) raised in the main thread, as Ctrl-C raises
    ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class UsageError(Exception):
    """Bad command-line arguments (argparse's error, raised instead of printing and exiting)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog, self.message = prog, message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    from openmace.version import __version__

    parser = _Parser(
        prog="openmace", description="MACE interatomic potentials: train, evaluate, run."
    )
    parser.add_argument("--version", action="version", version=f"openmace {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Checks of options shared by several commands, before a command starts."""
    device = getattr(args, "device", None)
    if isinstance(device, str):
        check_device(device)


def main(argv: list[str] | None = None) -> int:
    """Run ``openmace`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    context: dict = {"command": _command_in(argv)}
    with _stop_signals():
        try:
            return _run(argv, context)
        except (Exception, KeyboardInterrupt) as err:
            error = err
    return report(error, context, debug="--debug" in argv)


def _run(argv: list[str], context: dict) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        prog = err.prog  # the top-level parser reports unknown options of a command too
        if prog == parser.prog and context["command"] is not None:
            prog = f"{parser.prog} {context['command']}"
        print(_line(prog, f"{err.message} (see {prog} --help)"), file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 0
    context.update(command=args.command, args=args)
    if args.debug:
        logging.getLogger("openmace").setLevel(logging.DEBUG)
    if args.command in LONG_RUNNING:
        keep_freed_memory()
    check_arguments(args)
    return COMMANDS[args.command].run(args) or 0


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if a in COMMANDS), None)


def _line(prog: str, message: str) -> str:
    text = " ".join(message.split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + " ..."
    return f"{prog}: error: {text}"


def report(error: BaseException, context: dict, debug: bool = False) -> int:
    """Print ``error`` as one line on stderr (after its traceback with ``debug``); returns the
    exit code (see the module docstring)."""
    command = context.get("command")
    module: ModuleType | None = COMMANDS.get(command) if command else None
    if debug:
        traceback.print_exception(error)
    if isinstance(error, KeyboardInterrupt):
        signum = getattr(error, "signum", signal.SIGINT)
        message = f"interrupted by {signal.Signals(signum).name}"
        hint = getattr(module, "interrupted", None)
        if hint is not None and context.get("args") is not None:
            message += f": {hint(context['args'])}"
        code = 128 + signum
    elif expected(error):
        message, code = describe(error), EXIT_ERROR
    else:
        message = f"unexpected {type(error).__name__}: {describe(error)} (a bug; please report it"
        message += ")" if debug else "; run with --debug for the traceback)"
        code = EXIT_BUG
    print(_line(f"openmace {command}" if command else "openmace", message), file=sys.stderr)
    return code


def expected(error: BaseException) -> bool:
    """Whether ``error`` is an expected failure (exit code 2) rather than a bug."""
    if isinstance(error, (ValueError, OSError, MemoryError, RecursionError, EOFError)):
        return True
    for kind in type(error).__mro__:
        module = kind.__module__ or ""
        if module.startswith(("openmace.", "yaml.", "ase.io")) or module == "yaml":
            return True
        if kind.__name__ in ("OutOfMemoryError", "SafetensorError"):
            return True
    return False


def describe(error: BaseException) -> str:
    """The message of ``error``, with the file for an ``OSError`` that carries one."""
    if isinstance(error, OSError) and type(error).__str__ is OSError.__str__:
        reason = error.strerror or str(error) or type(error).__name__
        if error.filename is not None:
            second = f" -> {error.filename2}" if error.filename2 is not None else ""
            return f"{error.filename}{second}: {reason}"
        return reason
    if isinstance(error, RecursionError):
        return "input nested too deeply to read (RecursionError)"
    if isinstance(error, UnicodeDecodeError):
        return f"a text file holds bytes that are not {error.encoding} (binary or wrongly encoded)"
    if isinstance(error, MemoryError) and not str(error):
        return "out of memory"
    return str(error) or type(error).__name__


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` (also where it was ignored: background jobs inherit
    SIG_IGN), SIGTERM and SIGHUP raise :class:`Stopped`; the previous handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> NoReturn:
        raise Stopped(signum)

    handlers = {signal.SIGINT: signal.default_int_handler}
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and (name == "SIGTERM" or signal.getsignal(number) != signal.SIG_IGN):
            handlers[number] = stop
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


if __name__ == "__main__":
    sys.exit(main())
