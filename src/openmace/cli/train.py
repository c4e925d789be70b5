"""``openmace train``: fit a MACE potential to labelled structures.

    openmace train --config run.yaml [--any-option VALUE ...]

Every option of :class:`openmace.train.config.TrainConfig` is a flag (``--max-ell``,
``--max_ell``; mace-torch names such as ``--max_num_epochs`` and ``--num_channels`` too) and a
key of the YAML file; flags override the file. The model's options, their help and defaults
come from the declarations of :class:`openmace.model.MACEConfig`.

Errors, Ctrl-C and SIGTERM are reported by the boundary in :mod:`openmace.cli.main` (one line,
exit code 2, 130 or 143); :func:`interrupted` adds where the last checkpoint is.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import Field, fields

HELP = "train a MACE potential on an extended-XYZ (or any ASE-readable) data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openmace.train.config import HIDDEN_IRREPS_OPTIONS, MODEL_OPTIONS, TrainConfig

    parser.add_argument("--config", help="YAML file of options (flags override it)")
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


def interrupted(args: argparse.Namespace) -> str:
    """What to do after Ctrl-C or SIGTERM: where the last checkpoint is, and ``--resume``."""
    from openmace.train.loop import checkpoint_path

    cfg = getattr(args, "train_config", None)
    if cfg is None:
        return "training had not started"
    path = checkpoint_path(cfg)
    if path.is_file():
        return f"the last checkpoint is {path}; continue with the same options and --resume"
    return f"no checkpoint was written yet ({path}); start the run again"


def _default(f: Field) -> str:
    from dataclasses import MISSING

    if f.default is not MISSING:
        return str(f.default)
    return str(f.default_factory())


def run(args: argparse.Namespace) -> int:
    from openmace.cli.devices import check_device
    from openmace.foundations import resolve_any
    from openmace.train.config import TrainConfig, build_config, load_config_file
    from openmace.train.distributed import world_from_env
    from openmace.train.loop import train

    known = {f.name for f in fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in known}
    file_values = load_config_file(args.config) if args.config else {}
    cfg = build_config(file_values, flags)
    check_device(cfg.device)
    args.train_config = cfg  # for interrupted()
    world = world_from_env()  # torchrun / srun: data-parallel processes
    if not getattr(args, "debug", False):
        # one voice: the other ranks report warnings and errors only
        logging.getLogger("openmace").setLevel(logging.INFO if world.main else logging.WARNING)
    progress = not cfg.quiet and sys.stderr.isatty()
    result = train(cfg, progress=progress, resolve=resolve_any, world=world)
    if result is None:  # not rank 0: rank 0 reports
        return 0
    print()
    print(result.table_text)
    print()
    print(f"model: {result.model_path}")
    return 0
