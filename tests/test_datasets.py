"""`kizuna.datasets.load_fashion_mnist` on IDX files written here (the real files come from a Debian package that a
bare machine lacks): the values read back, and truncated, corrupt or mismatched files named."""

import gzip
import struct

import numpy as np
import pytest

from kizuna.datasets import load_fashion_mnist


def _idx(path, array: np.ndarray, cut: int = 0) -> None:
    """``array`` (uint8) as a gzip-compressed IDX file, its last ``cut`` bytes dropped."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw[:len(raw) - cut])


def _files(root, n_images: int = 3, n_labels: int = 3, cut: int = 0) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (n_images, 28, 28), dtype=np.uint8)
    _idx(root / "t10k-images-idx3-ubyte.gz", images, cut)
    _idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_labels, dtype=np.uint8) % 10)
    return images


def test_reads_what_was_written(tmp_path):
    images = _files(tmp_path)
    x, y = load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_allclose(x.numpy(), images.reshape(3, 784) / 255.0, rtol=1e-6)
    assert y.tolist() == [0, 1, 2]
    xb, _ = load_fashion_mnist("test", binarize=True, root=tmp_path)
    assert set(np.unique(xb.numpy())) <= {0.0, 1.0}


def test_truncated_corrupt_and_mismatched_files_are_named(tmp_path):
    _files(tmp_path, cut=100)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: the header promises 2352 values .* holds 2252"):
        load_fashion_mnist("test", root=tmp_path)
    _files(tmp_path, n_labels=2)
    with pytest.raises(ValueError, match=r"images of shape \(3, 28, 28\) and t10k-labels-idx1-ubyte.gz labels of "
                                         r"shape \(2,\)"):
        load_fashion_mnist("test", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: not a readable gzip-compressed IDX file"):
        load_fashion_mnist("test", root=tmp_path)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x03")  # float IDX
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        load_fashion_mnist("test", root=tmp_path)


def test_a_label_outside_the_ten_classes_is_named(tmp_path):
    """A damaged labels file holding 200 (a one-hot of ten classes failed far away, or a confusion table grew)."""
    _files(tmp_path)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 200, 1], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz holds the label 200 at row 1; .* 0..9"):
        load_fashion_mnist("test", root=tmp_path)
