"""The IDX reader and the Fashion-MNIST loader, on small IDX files written here.

The Debian package's files are never read: CI may not have them.
"""

import gzip
import struct

import numpy as np
import pytest

from fl_app.data import DatasetUnavailableError, packaged
from fl_app.data.idx import IdxFormatError, parse_idx, read_idx


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file written by hand: 0, 0, type code, ndim, big-endian sizes, values."""
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + big_endian.tobytes()


def test_idx_reads_uint8_images_and_labels_plain_and_gzipped(tmp_path):
    # Prepare: two 2x3 "images" and their labels, as MNIST stores them (type 0x08)
    images = np.array([[[0, 1, 2], [3, 4, 255]], [[9, 8, 7], [6, 5, 4]]], np.uint8)
    labels = np.array([7, 2], np.uint8)
    (tmp_path / "images.idx").write_bytes(idx_bytes(images, 0x08))
    with gzip.open(tmp_path / "labels.idx.gz", "wb") as file:
        file.write(idx_bytes(labels, 0x08))
    # Execute
    read_images = read_idx(tmp_path / "images.idx")
    read_labels = read_idx(tmp_path / "labels.idx.gz")
    # Assert
    assert read_images.dtype == np.uint8 and read_images.shape == (2, 2, 3)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_idx_reads_big_endian_wider_types_into_native_order():
    values = np.array([[1, -2], [300, -40000]], np.int32)
    floats = np.array([0.5, -1.25, 3e8], np.float32)
    ints = parse_idx(idx_bytes(values, 0x0C))
    np.testing.assert_array_equal(ints, values)
    assert ints.dtype == np.dtype(np.int32)  # native byte order, not ">i4"
    np.testing.assert_array_equal(parse_idx(idx_bytes(floats, 0x0D)), floats)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated header"),
        # 2 x 2 uint8 values need 4 bytes, 3 given
        (b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x02\x01\x02\x03", "need 4"),
    ],
)
def test_idx_malformed_file_is_refused_clearly(data, fragment):
    with pytest.raises(IdxFormatError, match=fragment):
        parse_idx(data, "bad.idx")


def write_fashion(directory, train=5, test=3):
    """The four Fashion-MNIST files, tiny: ``train`` and ``test`` 28x28 images."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        image_file, label_file = packaged.FASHION_FILES[split]
        for name, array in ((image_file, images), (label_file, labels)):
            with gzip.open(directory / name, "wb") as file:
                file.write(idx_bytes(array, 0x08))
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture
def fashion_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(packaged.FASHION_ENV_VAR, str(tmp_path))
    packaged.source_arrays.cache_clear()
    yield tmp_path
    packaged.source_arrays.cache_clear()


def test_fashion_mnist_loads_from_its_idx_files_as_images(fashion_dir):
    arrays = write_fashion(fashion_dir)
    train, test = packaged.load_packaged("fashion_mnist")
    assert train.x.shape == (5, 28, 28, 1) and test.x.shape == (3, 28, 28, 1)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    np.testing.assert_allclose(train.x[..., 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.y, arrays["test"][1])


def test_fashion_mnist_missing_names_the_package_and_the_install_command(
    fashion_dir,
):
    write_fashion(fashion_dir)
    (fashion_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetUnavailableError) as err:
        packaged.load_packaged("fashion_mnist")
    message = str(err.value)
    assert "dataset-fashion-mnist" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "t10k-labels-idx1-ubyte.gz" in message


def test_fashion_mnist_images_and_labels_that_disagree_are_refused(fashion_dir):
    write_fashion(fashion_dir)
    with gzip.open(fashion_dir / "train-labels-idx1-ubyte.gz", "wb") as file:
        file.write(idx_bytes(np.zeros(4, np.uint8), 0x08))  # 5 images, 4 labels
    with pytest.raises(ValueError, match="holds 5 images.*4 labels"):
        packaged.load_packaged("fashion_mnist")
