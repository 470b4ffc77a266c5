"""What one run or trial asks of a Ray cluster, and the torch threads it computes with.

``[resources] num_cpus`` when the suite sets it; else, with ``--jobs N``, the cluster's CPUs
divided by N (so N runs fit at once and the cores are shared between them); else 1. Ray takes a
fraction below one (several runs on one core or GPU) but only whole numbers above it, so a share
above one is rounded down. torch threads follow the CPUs (at least 1) unless ``train.threads``
says otherwise: a run that asks 0.5 CPU computes with one thread, sharing its core.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from harness.suite import ResourcesSection


@dataclass(frozen=True)
class TaskResources:
    num_cpus: float
    num_gpus: float
    threads: int        # torch threads for a run whose train.threads is unset

    def describe(self) -> str:
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.num_cpus:g} CPU{gpus} and {self.threads} torch thread(s) per run"


def _whole_above_one(x: float) -> float:
    return float(math.floor(x)) if x > 1 else x


def task_resources(section: ResourcesSection, *, jobs: int | None = None, cluster_cpus: float = 1.0) -> TaskResources:
    """The resources each task asks for (see the module docstring)."""
    if section.num_cpus is not None:
        cpus = section.num_cpus
    elif jobs:
        cpus = _whole_above_one(max(cluster_cpus, 1.0) / jobs)
    else:
        cpus = 1.0
    return TaskResources(num_cpus=cpus, num_gpus=section.num_gpus, threads=max(1, int(cpus)))


def run_threads(train: dict, resources: TaskResources) -> int:
    """A run's torch threads: ``train.threads`` when set, else what its CPUs allow."""
    return int(train.get("threads") or resources.threads)
