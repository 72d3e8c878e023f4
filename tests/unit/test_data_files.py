"""A SuperNode's own data file: loaded, and refused clearly when malformed."""

import numpy as np
import pytest

from fl_app.data import DataFileError, load_client_file
from tests.data_files import client_file_arrays


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_loads_train_and_test_as_train_and_validation(tmp_path):
    arrays = client_file_arrays()
    arrays["x_train"] = arrays["x_train"][..., 0]  # (n, h, w) is accepted
    data = load_client_file(write(tmp_path / "a.npz", **arrays), (8, 8, 1), 10)
    assert data.train.x.shape == (20, 8, 8, 1) and len(data.val) == 5
    np.testing.assert_array_equal(data.val.y, arrays["y_test"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("y_test"), "missing y_test"),
        (lambda a: a.update(x_train=a["x_train"][:, :4]), "rows of shape"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "one label per row"),
        (lambda a: a.update(y_test=a["y_test"] + 10), r"labels must be in \[0, 10\)"),
        (lambda a: a.update(y_train=a["y_train"].astype(float)), "integer labels"),
        (lambda a: a["x_test"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    ],
)
def test_malformed_files_fail_clearly(tmp_path, change, message):
    arrays = client_file_arrays()
    change(arrays)
    with pytest.raises(DataFileError, match=message):
        load_client_file(write(tmp_path / "bad.npz", **arrays), (8, 8, 1), 10)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        load_client_file(tmp_path / "nope.npz", (8, 8, 1), 10)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataFileError, match="not a readable .npz"):
        load_client_file(tmp_path / "text.npz", (8, 8, 1), 10)
