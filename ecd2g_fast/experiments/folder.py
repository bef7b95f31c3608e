"""A run's output folder: one writer at a time, atomic files, and a manifest of what belongs together.

* **Lock.** A command that writes into a folder holds an exclusive lock on its ``.lock`` file
  (``fcntl.flock``); a second process on the same folder is refused at once
  (:class:`FolderBusyError`). The lock dies with its process, so a killed run leaves no stale lock.
* **Atomic files.** Every file is written to a temporary name in the folder, flushed, fsynced and
  renamed into place (:func:`atomic_write`): a reader sees the old file or the new one, never a
  part.
* **Manifest.** ``run.json`` records, for every file a stage wrote, the id of the training run it
  belongs to and its SHA-256. ``config.json``, the checkpoint's metadata and ``metrics.json`` carry
  the run id too. A stage that reads a file first checks it against the manifest
  (:meth:`RunFolder.check`), so a checkpoint or samples copied in from another run, or changed
  after they were written, are refused with a message naming the file (:class:`RunFolderError`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .._atomic import atomic_write
from .configs import ExperimentConfig

__all__ = ["FolderBusyError", "RunFolder", "RunFolderError", "atomic_write", "atomic_write_text"]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
MANIFEST = "run.json"
SAMPLES = "samples.npy"
SOURCE_SAMPLES = "source_samples.npy"
#: The figures (all derived from the trained model and its samples); the last two: high-dimensional runs.
FIGURES = (
    "histograms.png",
    "exact_output.png",
    "current_flow.png",
    "loss.png",
    "samples.png",
    "marginals.png",
)
#: metrics.json keys written by the training stage (kept when new samples are drawn).
TRAIN_METRICS = frozenset(
    {"train_seconds", "train_steps", "final_loss", "num_parameters", "device", "model", "threads"}
)
#: Suffix of an unfinished training's files (``config.json.partial``, ``checkpoint.pt.partial``).
PARTIAL = ".partial"


class RunFolderError(ValueError):
    """Files of a run folder that do not belong together (the message names them)."""


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def _json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunFolder:
    """The output folder of a run (module docstring).

    Args:
        path: the folder; created by :meth:`locked`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunFolder]:
        """Hold the folder's lock for the ``with`` block (the folder is created first).

        Raises:
            FileExistsError: ``path`` exists and is not a folder.
            FolderBusyError: another process holds the lock.
        """
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"--out {str(self.path)!r} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise FolderBusyError(
                    f"another ecd2g process is writing {str(self.path)!r}; wait for it or choose another --out"
                ) from None
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -------------------------------------------------------------- config.json
    def read_config(self, *, partial: bool = False) -> tuple[ExperimentConfig, str]:
        """``(config, run id)`` of ``config.json`` (or of the unfinished training's copy).

        Raises:
            FileNotFoundError: no such file.
            RunFolderError: no run id, or not valid JSON.
            TypeError, ValueError: not a valid configuration (the message names the setting).
        """
        path = self.path / (CONFIG + (PARTIAL if partial else ""))
        if not path.is_file():
            raise FileNotFoundError(
                f"no {path.name} in {str(self.path)!r}: run `ecd2g train` or `ecd2g run` first"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFolderError(f"{str(path)!r} is not valid JSON: {error}") from None
        run_id = data.pop("run_id", None) if isinstance(data, dict) else None
        if not isinstance(run_id, str):
            raise RunFolderError(f"{str(path)!r} has no run id: it was not written by `ecd2g train`")
        return ExperimentConfig.from_json(data), run_id

    def write_config(self, config: ExperimentConfig, run_id: str, *, partial: bool = False) -> None:
        atomic_write_text(
            self.path / (CONFIG + (PARTIAL if partial else "")), _json({**config.to_json(), "run_id": run_id})
        )

    # -------------------------------------------------------------- metrics.json
    def read_metrics(self) -> dict:
        path = self.path / METRICS
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_metrics(self, values: dict, *, keep: Iterable[str] | None = None) -> dict:
        """Merge ``values`` into ``metrics.json`` (first dropping all keys not in ``keep``, if given)."""
        old = self.read_metrics()
        if keep is not None:
            old = {k: v for k, v in old.items() if k in set(keep)}
        merged = {**old, **values}
        atomic_write_text(self.path / METRICS, _json(merged))
        return merged

    # -------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, dict]:
        """``{file name: {"run_id", "sha256"}}`` of the files the stages wrote."""
        path = self.path / MANIFEST
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise RunFolderError(f"{str(path)!r} is not a run manifest: {error}") from None

    def record(self, run_id: str, names: Iterable[str], *, drop: Iterable[str] = ()) -> None:
        """Enter the files ``names`` (as they are now) into the manifest under ``run_id``; forget ``drop``."""
        files = {k: v for k, v in self.manifest().items() if k not in set(drop)}
        files.update({name: {"run_id": run_id, "sha256": sha256_file(self.path / name)} for name in names})
        atomic_write_text(self.path / MANIFEST, _json({"files": files}))

    def check(self, name: str, run_id: str) -> Path:
        """The path of ``name`` after checking that the manifest lists it, as it is, under ``run_id``.

        Raises:
            FileNotFoundError: no such file.
            RunFolderError: the file is not in the manifest, belongs to another run, or changed
                since it was written.
        """
        path = self.path / name
        if not path.is_file():
            raise FileNotFoundError(f"no {name} in {str(self.path)!r}")
        entry = self.manifest().get(name)
        where = f"{name} in {str(self.path)!r}"
        if entry is None:
            raise RunFolderError(
                f"{where} is not in the folder's manifest ({MANIFEST}): it was not written by this run"
            )
        if entry["run_id"] != run_id:
            raise RunFolderError(
                f"{where} belongs to run {entry['run_id']}, but config.json to run {run_id}; "
                "re-run the stage that writes it"
            )
        if sha256_file(path) != entry["sha256"]:
            raise RunFolderError(f"{where} changed after run {run_id} wrote it (checksum mismatch)")
        return path

    def remove(self, names: Iterable[str]) -> None:
        """Delete ``names`` where they exist."""
        for name in names:
            (self.path / name).unlink(missing_ok=True)
