"""Which device a run uses, and how it is named in logs, tags and bench headers."""
from __future__ import annotations

import platform
from typing import Any

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``None``/"auto" -> cuda when available, else cpu; "cuda" without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_label(device: Any = "auto") -> str:
    """``cuda (NVIDIA H200)`` or ``cpu (AMD EPYC 7B13, 2 threads)``: the threads torch computes with."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def available_cores() -> int:
    """The cores this process may use (containers, taskset), not the machine's count."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
