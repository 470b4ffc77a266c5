"""Image classification: scikit-learn's bundled 8x8 digits, and CIFAR-10/100 from local files.

Splits are fixed (independent of the run seed) so every variant and seed sees the same data.
"""
from __future__ import annotations

import pickle
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.data_files import record
from harness.specs import TaskMeta
from harness.tasks.base import ClassificationTask, TaskDataError

SPLIT_SEED = 0


def record_sklearn_digits(owner: object) -> None:
    """The file load_digits reads, for the run manifest (scikit-learn ships it)."""
    import sklearn.datasets

    record(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz", owner)


def _split_indices(n: int, fractions: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val, n_test = int(round(n * fractions[0])), int(round(n * fractions[1]))
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop_flip(pad: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Per-sample random crop after zero padding, and random horizontal flip, on a batch (B, C, H, W)."""

    def transform(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))             # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]               # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]               # (B, 1, 1, W)
        out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        flip = torch.rand(b, generator=gen) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(-1), out)

    return transform


class Digits(ClassificationTask):
    """scikit-learn's 1,797 8x8 handwritten digits (shipped with the package, no download).

    Fixed split: 20% test, 15% validation, the rest train.
    """

    meta = TaskMeta("image", num_classes=10, image_size=(8, 8), channels=1)

    @cached_property
    def _splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from sklearn.datasets import load_digits

        data = load_digits()
        record_sklearn_digits(self)
        x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0      # (N, 1, 8, 8) in [0, 1]
        y = torch.tensor(data.target, dtype=torch.long)
        train, val, test = _split_indices(len(y), (0.15, 0.20))
        mean, std = x[train].mean().item(), x[train].std().item()
        x = (x - mean) / std
        return {name: (x[idx], y[idx]) for name, idx in (("train", train), ("val", val), ("test", test))}

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self._splits


CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    label_key="labels", classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], label_key="fine_labels", classes=100,
                     mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761),
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def _read_cifar_file(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise TaskDataError(f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {exc}); "
                            f"delete the folder and download it again") from None
    if len(data) != len(labels):
        raise TaskDataError(f"{path} has {len(data)} images but {len(labels)} labels; the file is corrupt")
    return data, labels


class Cifar(ClassificationTask):
    """CIFAR-10/100 in torchvision's pickle format under ``data_root``, with the reference recipe:
    random crop (padding 4) and horizontal flip for training, per-dataset normalisation, 10% of the
    official train set held out (fixed permutation) for validation, the official test set for test."""

    def __init__(self, name: str, data_root: str = "data", download: bool = False, limit: int | None = None):
        self.name, self.info = name, CIFAR[name]
        self.root, self.download, self.limit = Path(data_root).expanduser(), download, limit
        self.meta = TaskMeta("image", num_classes=self.info["classes"], image_size=(32, 32), channels=3)

    def check_data(self) -> None:
        """Fail before training, with instructions, when the files are absent."""
        folder = self.root / self.info["folder"]
        missing = [f for f in self.info["train"] + self.info["test"] if not (folder / f).is_file()]
        if not missing:
            return
        if self.download:
            import torchvision

            cls = torchvision.datasets.CIFAR10 if self.name == "cifar10" else torchvision.datasets.CIFAR100
            try:
                cls(str(self.root), train=True, download=True)
            except Exception as exc:
                raise TaskDataError(f"downloading {self.name} into {self.root} failed ({exc}); download "
                                    f"{self.info['url']} by hand and unpack it into {self.root}") from None
            return
        raise TaskDataError(f"{self.name} is not under {folder} (missing {', '.join(missing)}). Unpack "
                            f"{self.info['url']} into {self.root}, point task.data_root at the folder that "
                            f"holds {self.info['folder']}/, or set task.download = true")

    @cached_property
    def _splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        self.check_data()
        folder = self.root / self.info["folder"]

        def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            for f in files:
                record(folder / f, self)  # its sha256 goes into the run manifest
            parts = [_read_cifar_file(folder / f, self.info["label_key"]) for f in files]
            x = torch.from_numpy(np.concatenate([p[0] for p in parts])).float() / 255.0    # (N, 3, 32, 32)
            return _normalise(x, self.info["mean"], self.info["std"]), torch.from_numpy(np.concatenate([p[1] for p in parts]))

        x, y = read(self.info["train"])
        x_test, y_test = read(self.info["test"])
        order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
        n_val = len(y) // 10
        val, train = order[:n_val], order[n_val:]
        if self.limit:
            train, val = train[: self.limit], val[: max(1, self.limit // 10)]
            x_test, y_test = x_test[: self.limit // 5 or 1], y_test[: self.limit // 5 or 1]
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x_test, y_test)}

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self._splits

    def train_transform(self) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        return random_crop_flip(4)


def cifar10(data_root: str = "data", download: bool = False, limit: int | None = None) -> Cifar:
    return Cifar("cifar10", data_root, download, limit)


def cifar100(data_root: str = "data", download: bool = False, limit: int | None = None) -> Cifar:
    return Cifar("cifar100", data_root, download, limit)
