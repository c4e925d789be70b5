"""``openmace train``: fit a MACE potential to labelled structures.

    openmace train --config run.yaml [--any-option VALUE ...]

Every option of :class:`openmace.train.config.TrainConfig` is a flag (``--max-ell``,
``--max_ell``; mace-torch names such as ``--max_num_epochs`` and ``--num_channels`` too) and a
key of the YAML file; flags override the file. The model's options, their help and defaults
come from the declarations of :class:`openmace.model.MACEConfig`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import Field, fields

HELP = "train a MACE potential on an extended-XYZ (or any ASE-readable) data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openmace.train.config import HIDDEN_IRREPS_OPTIONS, MODEL_OPTIONS, TrainConfig

    parser.add_argument("--config", help="YAML file of options (flags override it)")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    model = parser.add_argument_group("model options (saved with the model)")
    training = parser.add_argument_group("training options")
    for f in sorted(fields(TrainConfig), key=lambda f: f.name not in MODEL_OPTIONS):
        group = model if f.name in MODEL_OPTIONS + HIDDEN_IRREPS_OPTIONS else training
        help = f"{f.metadata['help']} (default: {_default(f)})".replace("%", "%%")
        names = [f.name, *f.metadata.get("aliases", ())]
        flags = []
        for name in names:
            for spelling in (name.replace("_", "-"), name):
                flag = f"--{spelling}"
                if flag not in flags:
                    flags.append(flag)
        kind = str(f.type)
        if kind.startswith("bool"):
            group.add_argument(
                *flags,
                dest=f.name,
                nargs="?",
                const="true",
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=help,
            )
        else:
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=help)


def _default(f: Field) -> str:
    from dataclasses import MISSING

    if f.default is not MISSING:
        return str(f.default)
    return str(f.default_factory())


def run(args: argparse.Namespace) -> int:
    from openmace.data.errors import DataError
    from openmace.train.config import TrainConfig, build_config, load_config_file
    from openmace.train.loop import TrainingError, train

    known = {f.name for f in fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in known}
    # Ctrl-C must stop training cleanly even when started from a context that ignores SIGINT
    # (background jobs of non-interactive shells inherit SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    file_values = load_config_file(args.config) if args.config else {}
    cfg = build_config(file_values, flags)
    logging.getLogger("openmace").setLevel(logging.INFO)
    try:
        result = train(cfg, progress=not cfg.quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        print(
            f"interrupted: the last checkpoint is in {cfg.work_dir}/checkpoints; "
            "continue with --resume",
            file=sys.stderr,
        )
        return 130
    except (DataError, TrainingError) as err:
        if args.debug:
            raise
        print(f"openmace train: error: {err}", file=sys.stderr)
        return 2
    print()
    print(result.table_text)
    print()
    print(f"model: {result.model_path}")
    return 0
