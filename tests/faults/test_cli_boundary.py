"""One error boundary for the command line (issue 14, class 8): every expected failure of every
subcommand is ONE line ``openmace COMMAND: error: MESSAGE`` on stderr with exit code 2, never a
traceback (only with ``--debug``); Ctrl-C exits 130, SIGTERM 143 with the same resumable message
for ``train``; a bug is one line pointing at ``--debug``, exit code 1.

The cases are generated: every input file of every subcommand × kinds of bad file, every output
× kinds of unwritable place, bad arguments of every command, and the boundary's exception table
× every subcommand.
"""

from __future__ import annotations

import builtins
import errno
import io
import itertools
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from openmace.cli import main as cli_main
from openmace.cli.main import COMMANDS, Stopped, main
from openmace.data.errors import DataError
from openmace.io.mace_torch import ConversionError
from openmace.io.model_file import ModelFileError
from openmace.simulate import SimulationError
from openmace.train.checkpoint import CheckpointError, WorkDirLocked, load_checkpoint
from openmace.train.loop import TrainingError
from tests.helpers import PARITY, molecules, write_xyz

DEMO_MODEL = Path(cli_main.__file__).parents[1] / "resources" / "demo-hcno.safetensors"
TINY = [
    "--channels", "4", "--max-L", "0", "--max-ell", "1", "--correlation", "2",
    "--radial-mlp", "8", "--r-max", "3.0", "--num-interactions", "1", "--readout-mlp", "4",
    "--batch-size", "4", "--e0s", "average", "--seed", "5", "--quiet", "--valid-fraction", "0.25",
]  # fmt: skip


def one_error_line(code: int, err: str, command: str | None, expected_code: int = 2) -> str:
    """The single ``openmace COMMAND: error: ...`` line of ``err`` (asserting the contract)."""
    assert code == expected_code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("openmace")]
    assert len(lines) == 1, err
    prefix = f"openmace {command}: error: " if command else "openmace: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    good = write_xyz(root / "good.xyz", molecules(8))
    model = root / "model.safetensors"
    shutil.copyfile(DEMO_MODEL, model)
    source = root / "mace_torch"  # a mace-torch folder (parity fixture p1)
    source.mkdir()
    fixture = PARITY / "p1_invariant_L0"
    shutil.copyfile(fixture / "config.json", source / "config.json")
    weights = lzma.decompress((fixture / "weights.safetensors.xz").read_bytes())
    (source / "weights.safetensors").write_bytes(weights)
    return {"good": good, "model": model, "mace_torch": source, "root": root}


# ---- bad input files: every input of every command × kinds of bad file -----------------------

INPUTS = {
    ("train", "--train-file"): lambda p, f, w: ["train", "--train-file", p, "--work-dir", w],
    ("train", "--config"): lambda p, f, w: ["train", "--config", p, "--work-dir", w],
    ("train", "--valid-file"): lambda p, f, w: [
        "train", "--train-file", f["good"], "--valid-file", p, "--work-dir", w,
    ],
    ("train", "--test-file"): lambda p, f, w: [
        "train", "--train-file", f["good"], "--test-file", p, "--work-dir", w,
    ],
    ("train", "--e0s"): lambda p, f, w: [
        "train", "--train-file", f["good"], "--work-dir", w, "--e0s", p,
    ],
    ("eval", "--model"): lambda p, f, w: [
        "eval", "--model", p, "--configs", f["good"], "--output", f"{w}.xyz",
    ],
    ("eval", "--configs"): lambda p, f, w: [
        "eval", "--model", f["model"], "--configs", p, "--output", f"{w}.xyz",
    ],
    ("md", "--model"): lambda p, f, w: [
        "md", "--model", p, "--structure", f["good"], "--steps", "2",
        "--trajectory", f"{w}.traj", "--log", f"{w}.csv",
    ],
    ("md", "--structure"): lambda p, f, w: [
        "md", "--model", f["model"], "--structure", p, "--steps", "2",
        "--trajectory", f"{w}.traj", "--log", f"{w}.csv",
    ],
    ("demo", "--model"): lambda p, f, w: ["demo", "--model", p],
    ("convert", "SOURCE"): lambda p, f, w: ["convert", p, "-o", f"{w}.safetensors"],
    ("export", "MODEL"): lambda p, f, w: ["export", "--torchscript", p, "-o", f"{w}.pt"],
    ("info", "MODEL"): lambda p, f, w: ["info", p],
}  # fmt: skip
INPUT_FAULTS = ["missing", "folder", "empty", "binary", "text", "unreadable", "nested-json"]
INPUT_CASES = [(*slot, fault) for slot, fault in itertools.product(INPUTS, INPUT_FAULTS)]


def _deny(monkeypatch, denied: Path, writes_only: bool = False) -> None:
    """Opening anything under ``denied`` fails with EACCES (for writing only, with
    ``writes_only``), as for a user without permission: tests run as root, where chmod is not
    enough."""
    real_open, real_os_open, real_access = builtins.open, os.open, os.access
    prefix = os.path.realpath(denied)

    def inside(file) -> bool:
        if not isinstance(file, (str, bytes, os.PathLike)):
            return False
        path = os.path.realpath(os.fsdecode(file))
        return path == prefix or path.startswith(prefix + os.sep)

    def guarded_open(file, mode="r", *args, **kwargs):
        writing = any(c in mode for c in "wax+")
        if inside(file) and (writing or not writes_only):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if inside(path) and (writing or not writes_only):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_access(path, mode, *args, **kwargs):
        if inside(path) and (mode & os.W_OK or not writes_only):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "access", guarded_access)


def bad_input(fault: str, slot: tuple[str, str], files: dict, folder: Path, monkeypatch) -> Path:
    path = folder / ("bad" if slot[1] != "--config" else "bad.yaml")
    if fault == "missing":
        return folder / "no-such-file.xyz"
    if fault == "folder":
        path.mkdir()
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif fault == "text":
        path.write_text("these are\nnot the data you are looking for\n")
    elif fault == "nested-json":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif fault == "unreadable":  # a good file of the right kind that cannot be opened
        good = {"--config": None, "--e0s": None, "SOURCE": files["mace_torch"]}.get(slot[1])
        if slot[1] in ("--model", "MODEL"):
            good = files["model"]
        elif slot[1] in ("--train-file", "--valid-file", "--test-file", "--configs", "--structure"):
            good = files["good"]
        if good is None:
            text = "{1: -1.0, 6: -2.0, 8: -3.0}\n" if slot[1] == "--e0s" else "epochs: 1\n"
            path.write_text(text)
        elif good.is_dir():
            shutil.copytree(good, path)
        else:
            shutil.copyfile(good, path)
        _deny(monkeypatch, path)
    return path


@pytest.mark.parametrize(("command", "flag", "fault"), INPUT_CASES)
def test_bad_input_file_is_one_line_naming_it(
    command, flag, fault, files, tmp_path, capsys, monkeypatch
):
    path = bad_input(fault, (command, flag), files, tmp_path, monkeypatch)
    argv = [str(a) for a in INPUTS[(command, flag)](path, files, tmp_path / "out")]
    if command == "train":  # the tiny model first: the flag under test wins
        argv[1:1] = [*TINY, "--epochs", "1"]
    code = main(argv)
    line = one_error_line(code, capsys.readouterr().err, command)
    if (flag, fault) == ("--config", "empty"):
        assert "train_file is required" in line  # an empty config file holds no options
    else:
        assert path.name in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.*"))


# ---- outputs that cannot be written -----------------------------------------------------------

OUTPUTS = {
    ("eval", "--output"): lambda p, f: [
        "eval", "--model", f["model"], "--configs", f["good"], "--output", p,
    ],
    ("md", "--trajectory"): lambda p, f: [
        "md", "--model", f["model"], "--structure", f["good"], "--steps", "2",
        "--trajectory", p, "--log", Path(p).parent / "md-other.csv", "--temperature", "10",
    ],
    ("md", "--log"): lambda p, f: [
        "md", "--model", f["model"], "--structure", f["good"], "--steps", "2",
        "--log", p, "--trajectory", Path(p).parent / "md-other.traj", "--temperature", "10",
    ],
    ("export", "-o"): lambda p, f: ["export", "--torchscript", f["model"], "-o", p],
    ("convert", "-o"): lambda p, f: ["convert", f["mace_torch"], "-o", p],
    ("train", "--work-dir"): lambda p, f: [
        "train", "--train-file", f["good"], "--work-dir", p, *TINY, "--epochs", "1",
    ],
}  # fmt: skip
OUTPUT_FAULTS = ["folder", "in-a-file", "unwritable", "disk-full"]
OUTPUT_CASES = [(*slot, fault) for slot, fault in itertools.product(OUTPUTS, OUTPUT_FAULTS)]


def _full_disk(monkeypatch, folder: Path) -> None:
    """Writes of files in ``folder`` fail with ENOSPC, as on a full disk (``/dev/full``)."""
    real_open = builtins.open
    prefix = os.path.realpath(folder) + os.sep

    def full_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wx"):
            if os.path.realpath(os.fsdecode(file)).startswith(prefix):
                return real_open("/dev/full", mode.replace("x", "w"), *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)
    monkeypatch.setattr(torch, "save", no_space)  # training checkpoints
    import openmace.io.model_file as model_file

    if hasattr(model_file, "save_file"):  # safetensors writes from Rust, past open()
        monkeypatch.setattr(model_file, "save_file", no_space)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(("command", "flag", "fault"), OUTPUT_CASES)
def test_unwritable_output_is_one_line(command, flag, fault, files, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "outputs"
    folder.mkdir()
    name = {"train": "work", "md": "out.traj" if flag == "--trajectory" else "out.csv"}
    path = folder / name.get(command, "out")
    if fault == "folder":
        path.mkdir() if command != "train" else path.write_text("a file, not a folder")
    elif fault == "in-a-file":
        (folder / "file").write_text("")
        path = folder / "file" / path.name
    elif fault == "unwritable":
        _deny(monkeypatch, folder, writes_only=True)
    elif fault == "disk-full":
        _full_disk(monkeypatch, folder)
    code = main([str(a) for a in OUTPUTS[(command, flag)](path, files)])
    one_error_line(code, capsys.readouterr().err, command)
    if fault in ("unwritable", "disk-full"):
        if command != "train":
            assert not path.exists()
        else:
            assert not (path / "model.safetensors").exists()
        assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---- bad arguments of every command -----------------------------------------------------------

BASE = {
    "train": ["train", "--train-file", "{good}", "--work-dir", "{tmp}/w", "--epochs", "1"],
    "eval": ["eval", "--model", "{model}", "--configs", "{good}", "--output", "{tmp}/o.xyz"],
    "md": ["md", "--model", "{model}", "--structure", "{good}", "--steps", "2",
           "--trajectory", "{tmp}/md.traj", "--log", "{tmp}/md.csv"],
    "demo": ["demo"],
    "convert": ["convert", "{mace_torch}", "-o", "{tmp}/c.safetensors"],
    "export": ["export", "--torchscript", "{model}", "-o", "{tmp}/e.pt"],
    "info": ["info", "{model}"],
}  # fmt: skip
BAD_DEVICES = ["cudaa", "cuda:x", "gpu", "meta", "CPU", "cuda:-1", "cuda:99", "", "cpu cpu"]
if not torch.cuda.is_available():
    BAD_DEVICES += ["cuda", "cuda:0"]
ARGUMENT_CASES = (
    [(c, ["--no-such-option"]) for c in BASE]
    + [(c, ["--device", d]) for c, d in itertools.product(("train", "eval", "md"), BAD_DEVICES)]
    + [("demo", ["--molecule", m]) for m in ("unknown", "", "h2o", "ethanoll", "C6H6 ")]
    + [("md", ["--index", i]) for i in ("99", "-99", "8", "x")]
    + [("md", [flag, v]) for flag, v in [("--temperature", "-300"), ("--timestep", "0"),
                                        ("--steps", "-5"), ("--steps", "1.5")]]
    + [("eval", ["--batch-size", b]) for b in ("-1", "0", "many")]
    + [("eval", ["--dtype", "float16"]), ("export", ["--dtype", "half"])]
    + [("train", ["--threads", t]) for t in ("-2", "0", "two")]
    + [("train", ["--name", n]) for n in ("../x", "a/b", "/tmp/x", "..", ".", "", "a\\b")]
    + [("train", [flag, v]) for flag, v in [
        ("--epochs", "many"), ("--epochs", "0"), ("--lr", "nan"), ("--lr", "-1"),
        ("--radial-mlp", "a,b"), ("--max-ell", "100"), ("--correlation", "0"),
        ("--valid-fraction", "1.5"), ("--dtype", "float16"), ("--batch-size", "0"),
        ("--r-max", "nan"), ("--r-max", "-3"), ("--resume", "maybe"), ("--hidden-irreps", "x"),
    ]]
)  # fmt: skip
MISSING_REQUIRED = [
    ["eval", "--model", "m"], ["md", "--structure", "s"], ["convert", "s"],
    ["export", "m", "-o", "x"], ["info"], ["nonsense"], ["--no-such-option"],
]  # fmt: skip


def _argv(command: str, extra: list[str], files: dict, tmp: Path) -> list[str]:
    values = {k: str(v) for k, v in files.items()} | {"tmp": str(tmp)}
    return [a.format(**values) for a in BASE[command]] + extra


@pytest.mark.parametrize(("command", "extra"), ARGUMENT_CASES)
def test_bad_argument_is_one_line(command, extra, files, tmp_path, capsys):
    code = main(_argv(command, extra, files, tmp_path))
    one_error_line(code, capsys.readouterr().err, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv", MISSING_REQUIRED)
def test_missing_arguments_are_one_line(argv, capsys):
    command = argv[0] if argv[0] in COMMANDS else None
    one_error_line(main(argv), capsys.readouterr().err, command)


# ---- the boundary's exception table × every command -------------------------------------------

EXCEPTIONS = [
    (ValueError("a bad value\nover two lines"), 2, "a bad value over two lines"),
    (DataError("data.xyz", 3, "NaN positions"), 2, "data.xyz: structure 3: NaN positions"),
    (ModelFileError("m.safetensors: corrupt"), 2, "m.safetensors: corrupt"),
    (ConversionError("src: missing config.json"), 2, "missing config.json"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/f.xyz"), 2, "/d/f.xyz"),
    (PermissionError(errno.EACCES, "Permission denied", "/d/f"), 2, "/d/f: Permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/d"), 2, "/d: Is a directory"),
    (OSError(errno.ENOSPC, "No space left on device", "/d/o"), 2, "/d/o: No space left"),
    (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
    (OSError(errno.EIO, "Input/output error", "/d/a", None, "/d/b"), 2, "/d/a -> /d/b"),
    (OSError("Not a BundleTrajectory: /d"), 2, "Not a BundleTrajectory"),
    (MemoryError("needs 12.0 GiB, 2.0 GiB available"), 2, "needs 12.0 GiB"),
    (MemoryError(), 2, "out of memory"),
    (json.JSONDecodeError("Expecting value", "{x", 1), 2, "Expecting value"),
    (RecursionError("maximum recursion depth exceeded"), 2, "nested too deeply"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, "not utf-8"),
    (EOFError("Ran out of input"), 2, "Ran out of input"),
    (yaml.YAMLError("bad YAML"), 2, "bad YAML"),
    (TrainingError("non-finite loss in epoch 3"), 2, "non-finite loss"),
    (SimulationError("temperature 31000 K", 12, 0.006), 2, "31000 K"),
    (WorkDirLocked("w/model.lock is locked by process 7"), 2, "process 7"),
    (CheckpointError("c.ckpt: damaged"), 2, "damaged"),
    (KeyboardInterrupt(), 130, "interrupted by SIGINT"),
    (Stopped(signal.SIGTERM), 143, "interrupted by SIGTERM"),
    (Stopped(signal.SIGHUP), 129, "interrupted by SIGHUP"),
    (TypeError("unsupported operand"), 1, "--debug"),
    (KeyError("energy"), 1, "--debug"),
    (AttributeError("no attribute x"), 1, "--debug"),
    (RuntimeError("shape mismatch"), 1, "--debug"),
    (IndexError("list index out of range"), 1, "--debug"),
    (ZeroDivisionError("division by zero"), 1, "--debug"),
    (AssertionError(), 1, "--debug"),
]
MINIMAL = {
    "train": ["train"],
    "eval": ["eval", "--model", "m", "--configs", "c", "--output", "o"],
    "md": ["md", "--model", "m", "--structure", "s"],
    "demo": ["demo"],
    "convert": ["convert", "s", "-o", "d"],
    "export": ["export", "m", "--torchscript", "-o", "o"],
    "info": ["info", "m"],
}


@pytest.mark.parametrize("command", list(MINIMAL))
@pytest.mark.parametrize(
    ("error", "code", "shown"), EXCEPTIONS, ids=[type(e[0]).__name__ for e in EXCEPTIONS]
)
def test_exception_table(command, error, code, shown, capsys, monkeypatch):
    def fail(args):
        raise error

    monkeypatch.setattr(COMMANDS[command], "run", fail)
    line = one_error_line(main(MINIMAL[command]), capsys.readouterr().err, command, code)
    assert shown in line
    if command == "train" and code in (130, 143):
        assert "training had not started" in line


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(("error", "code"), [(TypeError("a bug"), 1), (ValueError("bad"), 2)])
def test_debug_shows_the_traceback(where, error, code, capsys, monkeypatch):
    def fail(args):
        raise error

    monkeypatch.setattr(COMMANDS["info"], "run", fail)
    argv = ["--debug", "info", "m"] if where == "before" else ["info", "m", "--debug"]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" in err and "def fail" not in err and "raise error" in err
    assert err.strip().splitlines()[-1].startswith("openmace info: error: ")
    assert "run with --debug" not in err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_real_signals_in_process_and_handlers_restored(signum, code, capsys, monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def signalled(args):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("not interrupted")

    monkeypatch.setattr(COMMANDS["info"], "run", signalled)
    line = one_error_line(main(["info", "m"]), capsys.readouterr().err, "info", code)
    assert signal.Signals(signum).name in line
    assert {s: signal.getsignal(s) for s in before} == before


def test_help_and_version_are_not_errors(capsys):
    assert main([]) == 0
    assert main(["--version"]) == 0
    assert main(["eval", "--help"]) == 0
    assert "Traceback" not in capsys.readouterr().err


# ---- SIGTERM during training (a scheduler's time limit), in a real process --------------------


def test_sigterm_stops_training_with_the_resume_hint_and_resume_continues(tmp_path):
    data = write_xyz(tmp_path / "train.xyz", molecules(16))
    work = tmp_path / "work"
    base = [sys.executable, "-m", "openmace.cli.main", "train", "--train-file", str(data)]
    args = ["--work-dir", str(work), "--name", "run", *TINY]
    env = {**os.environ, "OPENMACE_KERNELS": "0"}  # about signals: no kernel build to wait for
    proc = subprocess.Popen(
        [*base, "--epochs", "200", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log = work / "run.log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("openmace")]
    assert len(lines) == 1 and lines[0].startswith("openmace train: error: interrupted by SIGTERM")
    assert str(work / "checkpoints" / "run.ckpt") in lines[0] and "--resume" in lines[0]
    state = load_checkpoint(work / "checkpoints" / "run.ckpt")
    assert 1 <= state["epoch"] < 200
    assert not (work / "run.lock").exists()  # released on the way out
    done = subprocess.run(
        [*base, "--epochs", str(state["epoch"] + 1), *args, "--resume"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"model: {work / 'run.safetensors'}"
    assert load_checkpoint(work / "checkpoints" / "run.ckpt")["epoch"] == state["epoch"] + 1
