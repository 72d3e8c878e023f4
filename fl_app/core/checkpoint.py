"""Checkpoints of a whole run: written atomically after rounds, read back to resume.

A checkpoint is one ``.npz`` file per completed round under ``checkpoints/`` in the
run's output directory: named arrays (the global model, a strategy's masks, numpy's
RNG) and one JSON document (``meta``: the round, the run config, the code version,
the strategy's and the recorder's state, Python's RNG). It is written to a
temporary file in the same directory and renamed over its final name, so a reader
sees a whole checkpoint or none; a zip's per-member CRC catches a file damaged
afterwards. :class:`RunLock` keeps two processes from writing one output directory.

Imports neither TensorFlow nor Flower.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".fl-dnn.lock"
FORMAT = 1
_NAME = re.compile(r"^round-(\d{5,})\.npz$")
_META = "__meta__"
# Keys a resumed run may change: the rounds to run, and where it is told to resume.
RESUMABLE_KEYS = frozenset({"num-rounds", "resume", "output-dir"})


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupted, or does not fit the run."""


def run_output_dir(output_dir: str, run_id: int) -> Path:
    """Return ``output_dir``, else ``outputs/flwr-run-<run id>``, made absolute."""
    if output_dir:
        return Path(output_dir).expanduser().resolve()
    return Path("outputs", f"flwr-run-{run_id}").resolve()


@functools.cache
def code_version() -> str:
    """Return the package version and a digest of ``fl_app``'s and ``strategies``'."""
    try:
        version = importlib.metadata.version("fl-dnn")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]  # the project: fl_app/core/..
    digest = hashlib.sha256()
    for package in ("fl_app", "strategies"):
        sources = sorted((root / package).rglob("*.py"))
        if not sources:  # a digest of nothing would call every version the same
            raise RuntimeError(f"code_version: no Python sources in {root / package}")
        for path in sources:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return f"{version}+{digest.hexdigest()[:12]}"


@dataclass
class Checkpoint:
    """One checkpoint read back: the round it follows, its arrays and its meta."""

    path: Path
    round: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def group(self, prefix: str) -> list[np.ndarray]:
        """Return the arrays saved as ``prefix/0``, ``prefix/1``, ... in order."""
        found = sorted(
            (int(name.rsplit("/", 1)[1]), array)
            for name, array in self.arrays.items()
            if name.rsplit("/", 1)[0] == prefix
        )
        return [array for _, array in found]


def flatten_arrays(groups: Mapping[str, Iterable[np.ndarray]]) -> dict[str, np.ndarray]:
    """``{"global": [a, b]}`` -> ``{"global/0": a, "global/1": b}`` (see ``group``)."""
    return {
        f"{prefix}/{i}": np.asarray(array)
        for prefix, arrays in groups.items()
        for i, array in enumerate(arrays)
    }


def checkpoint_path(output_dir: Path, server_round: int) -> Path:
    """Where the checkpoint after ``server_round`` lives."""
    return output_dir / CHECKPOINT_DIR / f"round-{server_round:05d}.npz"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Return ``(round, path)`` of every checkpoint in ``output_dir``, oldest first."""
    folder = output_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    output_dir: Path,
    server_round: int,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    keep: int,
) -> Path:
    """Write the checkpoint after ``server_round`` atomically; keep the last ``keep``.

    ``arrays``: named arrays (see :func:`flatten_arrays`); ``meta``: JSON values.
    """
    path = checkpoint_path(output_dir, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = json.dumps({"format": FORMAT, "round": server_round, **meta})
    payload = {
        **arrays,
        _META: np.frombuffer(document.encode(), dtype=np.uint8),
    }
    write_atomically(path, lambda handle: np.savez(handle, **payload))
    for _, old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def write_atomically(path: Path, write: Any) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it.

    The data is flushed to disk before the rename, so a crash leaves the old file
    or the new one, never a mix; a failed write removes its temporary file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint; raise :class:`CheckpointError` naming what is wrong."""
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupted ({type(err).__name__}: "
            f"{err}); remove it to resume from the one before, if any"
        ) from err
    if _META not in arrays:
        raise CheckpointError(f"checkpoint {path} has no meta record: not a checkpoint")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} has a corrupted meta record") from err
    if meta.get("format") != FORMAT or not isinstance(meta.get("round"), int):
        raise CheckpointError(
            f"checkpoint {path} has format {meta.get('format')!r}; this code reads "
            f"format {FORMAT}"
        )
    return Checkpoint(path, meta["round"], arrays, meta)


def latest_checkpoint(output_dir: Path) -> Checkpoint:
    """Read the last checkpoint of the run in ``output_dir``.

    Raises
    ------
    CheckpointError
        When the directory or its checkpoints are missing, or the last one is
        partial or corrupted.
    """
    if not output_dir.is_dir():
        raise CheckpointError(f"resume: {output_dir} is not a directory")
    found = list_checkpoints(output_dir)
    if not found:
        raise CheckpointError(
            f"resume: no checkpoint in {output_dir / CHECKPOINT_DIR} (was the run "
            "written with checkpoint-every > 0, and did it finish a round?)"
        )
    checkpoint = load_checkpoint(found[-1][1])
    if checkpoint.round != found[-1][0]:
        raise CheckpointError(
            f"checkpoint {found[-1][1]} holds round {checkpoint.round}, not the round "
            "its name says"
        )
    return checkpoint


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> list[str]:
    """Return the run-config keys (other than the rounds) whose values differ."""
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def resumed_rounds(
    checkpoint: Checkpoint, run_config: Mapping[str, Any], rounds_given: bool
) -> dict[str, Any]:
    """Return the run config a resume runs (the checkpoint's rounds unless given).

    ``run_config`` keeps its ``num-rounds`` when the user gave one (it extends the
    run). ``resume=DIR`` alone finishes the run as it was configured; the flat defaults
    (Hydra's, or ``[tool.flwr.app.config]``'s) must not replace its round count.
    """
    if rounds_given:
        return dict(run_config)
    return {**run_config, "num-rounds": checkpoint.meta["run_config"]["num-rounds"]}


def check_resumable(checkpoint: Checkpoint, run_config: Mapping[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` under a run config it cannot continue.

    That is one that differs from the checkpoint's own in anything but the rounds,
    or whose ``num-rounds`` the checkpoint has already reached.
    """
    rounds = run_config.get("num-rounds")
    if isinstance(rounds, int) and checkpoint.round >= rounds:
        raise CheckpointError(
            f"resume: the run in {checkpoint.path.parent.parent} has finished "
            f"{checkpoint.round} round(s), num-rounds is {rounds}; raise num-rounds "
            "to go on"
        )
    differ = config_differences(checkpoint.meta["run_config"], run_config)
    if differ:
        saved = checkpoint.meta["run_config"]
        details = ", ".join(
            f"{k}: {saved.get(k)!r} -> {run_config.get(k)!r}" for k in differ
        )
        raise CheckpointError(
            f"resume: the run config differs from the checkpoint's ({checkpoint.path})"
            f" in {details}; only num-rounds may change"
        )


class RunLock:
    """An exclusive lock on a run's output directory while a process writes it.

    ``flock`` on ``.fl-dnn.lock``: the kernel drops it when the holder dies, so a
    killed run never leaves a stale lock, and a run (or an orphan of a killed one)
    that still writes the directory keeps every other process out.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`CheckpointError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise CheckpointError(
                    f"another process (pid {holder}) is still writing to "
                    f"{self.path.parent}; stop it before running there again"
                ) from err
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def rng_state() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Python's and numpy's global RNG states, as (JSON, arrays) for a checkpoint.

    Flower samples clients with ``random``; its DP wrappers draw noise from
    numpy's global RNG.
    """
    import random

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": {"version": version, "gauss": gauss},
        "numpy": {"name": name, "pos": pos, "has_gauss": has_gauss, "cached": cached},
    }
    arrays = {
        "rng/python": np.array(internal, dtype=np.int64),
        "rng/numpy": np.asarray(keys),
    }
    return meta, arrays


def restore_rng_state(checkpoint: Checkpoint) -> None:
    """Put Python's and numpy's global RNGs back where the checkpoint left them."""
    import random

    saved = checkpoint.meta["rng"]
    internal = tuple(int(v) for v in checkpoint.arrays["rng/python"])
    random.setstate((saved["python"]["version"], internal, saved["python"]["gauss"]))
    numpy = saved["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            checkpoint.arrays["rng/numpy"],
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
