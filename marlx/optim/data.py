"""Datasets and small reference models shared by marlx.optim's standalone trainers and benchmarks.

No downloads: ``digits`` is scikit-learn's bundled 8x8 handwritten digits (1,797 real images);
``cifar10`` reads the standard CIFAR-10 "python version" files (``data_batch_1..5``, ``test_batch``)
from a folder the user already has.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from marlx.errors import MarlxError, MissingDependencyError


@dataclass
class ArrayDataset:
    """Features ``x`` (float32, N x C x H x W or N x D) and integer labels ``y`` as torch tensors."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> "ArrayDataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ArrayDataset(self.x[idx], self.y[idx], self.num_classes)

    def as_torch_dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.x, self.y)


def load_digits(test_fraction: float = 0.25, seed: int = 0, image: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's digits as (train, test); pixels scaled to [0, 1]; ``image`` gives N x 1 x 8 x 8."""
    try:
        from sklearn.datasets import load_digits as _load
    except ModuleNotFoundError:
        raise MissingDependencyError("the digits dataset", "sklearn", "pip install scikit-learn") from None
    data = _load()
    x = (data.data / 16.0).astype(np.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    mk = lambda i: ArrayDataset(torch.from_numpy(x[i]), torch.from_numpy(y[i]), 10)  # noqa: E731
    return mk(train), mk(test)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(folder: str, normalize: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 from its standard python-pickle files in ``folder`` (``cifar-10-batches-py``).

    Raises a clear error naming the missing file. Images come as float32 N x 3 x 32 x 32 in [0, 1],
    normalised with the usual per-channel mean/std when ``normalize``.
    """

    def read(name: str):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise MarlxError(
                f"CIFAR-10 file {path!r} not found; point the loader at the extracted "
                "'cifar-10-batches-py' folder (data_batch_1..5 and test_batch)"
            )
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        y = np.asarray(d[b"labels"], np.int64)
        return x, y

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read("test_batch")
    if normalize:
        mean = np.array(CIFAR10_MEAN, np.float32)[None, :, None, None]
        std = np.array(CIFAR10_STD, np.float32)[None, :, None, None]
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    return (
        ArrayDataset(torch.from_numpy(xtr), torch.from_numpy(ytr), 10),
        ArrayDataset(torch.from_numpy(xte), torch.from_numpy(yte), 10),
    )


def write_cifar10_like(folder: str, n_per_batch: int = 20, seed: int = 0) -> None:
    """Write small random files in CIFAR-10's exact python format (for tests of :func:`load_cifar10`)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n_per_batch).tolist(),
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f)


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32, batch_norm: bool = True) -> nn.Module:
    """A small conv net for 8x8 digits (or any small image): conv-BN-ReLU x2, pool, linear x2."""
    norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        norm(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        norm(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * width, 4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, num_classes),
    )


def mlp(in_dim: int = 64, num_classes: int = 10, hidden: int = 128, depth: int = 2) -> nn.Module:
    """A plain MLP (flattens its input)."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    def __init__(self, hidden: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.fc = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(torch.relu(self.norm(x)))


class _ResidualMLP(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, hidden: int, blocks: int, norm: bool, stem: int = 0):
        super().__init__()
        if stem > 0:
            self.inp = nn.Sequential(nn.Linear(in_dim, stem), nn.ReLU(), nn.Linear(stem, hidden))
        else:
            self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden, norm) for _ in range(blocks)])
        self.out_norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.flatten(1)))
        return self.out(torch.relu(self.out_norm(h)))


def residual_mlp(in_dim: int = 64, num_classes: int = 10, hidden: int = 64, blocks: int = 12,
                 norm: bool = True, stem: int = 0) -> nn.Module:
    """A deep pre-norm residual MLP (flattens its input): ``Linear(in_dim, hidden)``, ``blocks`` residual blocks
    ``x + Linear(relu(LayerNorm(x)))``, then ``Linear(hidden, num_classes)`` after a LayerNorm and ReLU.

    ``blocks + 2`` weight matrices, the ``blocks`` hidden ones of equal size: a many-layer model in which every
    layer holds a small share of the parameters (what FedLUAR's layer recycling is meant for), fast on a CPU.
    ``stem > 0`` replaces the input layer by a wide stem ``Linear(in_dim, stem) -> ReLU -> Linear(stem, hidden)``
    (``blocks + 3`` weight matrices): two input-side layers then hold most of the parameters, as a text model's
    token embedding and feed-forward matrices do (DistilBERT, FedLUAR's 17 % result).
    """
    return _ResidualMLP(in_dim, num_classes, hidden, blocks, norm, stem)


@torch.no_grad()
def accuracy(model: nn.Module, data: ArrayDataset, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        correct += (model(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(data))
