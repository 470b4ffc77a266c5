"""The environment a run trains in, as the manifest records it: versions, OS, device and the
settings that decide whether a re-run can be bit-for-bit identical."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any


def versions() -> dict[str, Any]:
    """Python, torch, numpy, harness and every loaded third-party plugin (``plugins``: name -> version)."""
    import numpy
    import torch

    from harness import __version__
    from harness.plugins import plugin_infos

    return {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "harness": __version__,
        "plugins": {i.name: i.version for i in plugin_infos() if not i.default and not i.error},
    }


def system() -> dict[str, str]:
    """Informational: a kernel update or another host does not make a re-run drift."""
    return {"os": platform.platform(), "machine": platform.machine(), "implementation": sys.implementation.name}


def device(train: dict[str, Any]) -> dict[str, str]:
    """The device a run with these (effective) train settings uses: its type and its label."""
    from harness.devices import device_label, resolve_device

    dev = resolve_device(train.get("device", "auto"))
    return {"type": dev.type, "label": device_label(dev, threads=train.get("threads"))}


def determinism(threads: int) -> dict[str, Any]:
    """What decides run-to-run equality: the global seeds the runner sets, torch's threads (CPU
    reductions are exact only at the same count) and the deterministic-algorithm switches."""
    import torch

    return {
        "seeded": ["random", "numpy", "torch"],   # execute._seed_everything, before the model is built
        "threads": threads,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def apply_determinism(settings: dict[str, Any]) -> None:
    """Switch torch to the recorded settings before a re-run (threads travel in the run config)."""
    import torch

    if settings.get("cublas_workspace_config"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = settings["cublas_workspace_config"]
    torch.use_deterministic_algorithms(bool(settings.get("deterministic_algorithms")),
                                       warn_only=bool(settings.get("deterministic_warn_only")))
    torch.backends.cudnn.deterministic = bool(settings.get("cudnn_deterministic"))
    torch.backends.cudnn.benchmark = bool(settings.get("cudnn_benchmark"))
    if settings.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(settings["float32_matmul_precision"])
