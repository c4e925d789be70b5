"""``openmace`` command line: one thin module per subcommand."""

from __future__ import annotations

import argparse
import logging
import sys

from openmace.cli import convert, demo, eval, export, info, md, train
from openmace.cli.allocator import keep_freed_memory

COMMANDS = {
    "train": train,
    "eval": eval,
    "md": md,
    "demo": demo,
    "convert": convert,
    "export": export,
    "info": info,
}
LONG_RUNNING = ("train", "eval", "md")  # commands that run with malloc keeping freed memory


def build_parser() -> argparse.ArgumentParser:
    from openmace.version import __version__

    parser = argparse.ArgumentParser(
        prog="openmace", description="MACE interatomic potentials: train, evaluate, run."
    )
    parser.add_argument("--version", action="version", version=f"openmace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in LONG_RUNNING:
        keep_freed_memory()
    try:
        return COMMANDS[args.command].run(args) or 0
    except (ValueError, FileNotFoundError, MemoryError) as err:
        print(f"openmace {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
