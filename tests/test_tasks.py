import pickle

import numpy as np
import pytest
import torch

from harness.metrics import accuracy, bpc, loss, perplexity
from harness.tasks.base import TaskDataError
from harness.tasks.vision import Digits, cifar10, cifar100, random_crop_flip


def test_digits_split_is_fixed_and_disjoint():
    a, b = Digits().splits(), Digits().splits()
    sizes = {k: len(v[1]) for k, v in a.items()}
    assert sizes == {"train": 1168, "val": 270, "test": 359}
    assert torch.equal(a["test"][0], b["test"][0])
    assert abs(a["train"][0].mean().item()) < 1e-5  # normalised on train statistics


def make_cifar(root, name, n_per_file=20):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], "fine_labels"
    folder.mkdir(parents=True)
    for f in files:
        entry = {"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
                 key: rng.integers(0, 10, n_per_file).tolist()}
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh)
    return folder


@pytest.mark.parametrize("name, factory, n_train", [("cifar10", cifar10, 100), ("cifar100", cifar100, 20)])
def test_cifar_reads_pickle_folder(tmp_path, name, factory, n_train):
    make_cifar(tmp_path, name)
    task = factory(data_root=str(tmp_path))
    s = task.splits()
    assert s["train"][0].shape[1:] == (3, 32, 32)
    assert len(s["val"][1]) == n_train // 10 and len(s["train"][1]) == n_train - n_train // 10
    assert len(s["test"][1]) == 20
    assert task.meta.num_classes == (10 if name == "cifar10" else 100)
    x, y = next(iter(task.batches("train", 8)))
    assert x.shape == (8, 3, 32, 32)


def test_cifar_missing_data_says_how_to_fix(tmp_path):
    with pytest.raises(TaskDataError) as err:
        cifar10(data_root=str(tmp_path)).check_data()
    msg = str(err.value)
    assert str(tmp_path) in msg and "download = true" in msg and "cifar-10-python.tar.gz" in msg


def test_cifar_corrupt_file_is_named(tmp_path):
    folder = make_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(TaskDataError, match="data_batch_3 is not a readable CIFAR batch"):
        cifar10(data_root=str(tmp_path)).splits()


def test_random_crop_flip_moves_and_mirrors():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = random_crop_flip(1)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Every output is a shifted (and maybe mirrored) window: its non-zero values come from x.
    assert set(out.unique().tolist()) <= set(range(16))
    assert not torch.equal(out[0], out[1]) or not torch.equal(out[1], out[2])


def test_metrics_against_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    nll = [np.log(1 + np.exp(-2)), np.log(1 + np.exp(-1)), np.log(1 + np.exp(3))]
    assert loss(logits, labels) == pytest.approx(np.mean(nll), rel=1e-6)
    assert perplexity(logits, labels) == pytest.approx(np.exp(np.mean(nll)), rel=1e-6)
    assert bpc(logits, labels) == pytest.approx(np.mean(nll) / np.log(2), rel=1e-6)
