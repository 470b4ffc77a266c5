"""The core's built-in tasks."""
from harness import TaskSpec, hookimpl


@hookimpl
def register_tasks(register):
    register(TaskSpec("digits", "harness.tasks.vision:Digits", metrics=("accuracy", "loss"),
                      description="scikit-learn's bundled 8x8 digits (1,797 images), fixed split, no download"))
    register(TaskSpec("cifar10", "harness.tasks.vision:cifar10", metrics=("accuracy", "loss"),
                      description="CIFAR-10 from data_root (torchvision pickle format); download = true to fetch"))
    register(TaskSpec("cifar100", "harness.tasks.vision:cifar100", metrics=("accuracy", "loss"),
                      description="CIFAR-100 from data_root (torchvision pickle format); download = true to fetch"))
