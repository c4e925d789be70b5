"""The ``--device`` option of the commands: checked before any work, one clear message."""

from __future__ import annotations


def check_device(text: str, option: str = "--device") -> str:
    """``text`` if it names a device PyTorch can use here, else a ``ValueError`` saying why."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"{option} {text!r} is not a device: use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "PyTorch was built without CUDA" if torch.version.cuda is None else "no GPU"
            raise ValueError(f"{option} {text}: CUDA is not available ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{option} {text}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
        return text
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{option} {text}: MPS is not available; use --device cpu")
        return text
    raise ValueError(f"{option} {text!r}: openmace runs on cpu, cuda and mps devices")
