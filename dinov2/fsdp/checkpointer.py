"""Atomic, resharding checkpoints with ``torch.distributed.checkpoint`` (DCP), and the teacher export.

Layout under ``<output_dir>/ckpt/``::

    0001249/                  a complete checkpoint (iteration 1249)
        .metadata             DCP index (model + optimizer, any world size can load it)
        __<rank>_0.distcp     DCP shards, one file per saving rank
        extra_rank_<r>.pt     per-rank picklable state: iteration, RNG states, whatever the caller adds
        checkpoint.json       {"iteration": ..., "world_size": ..., "files": {name: [size, crc32], ...}}
    tmp_0002499/              a save in progress (or interrupted): ignored, removed by the next save

A save writes everything into ``tmp_<iteration>``, waits for every rank, then rank 0 records the files' sizes and
checksums and renames the folder to its final name, so a crash at any point leaves the previous checkpoint intact
and :meth:`Checkpointer.latest` never returns a partial one; a save that fails (a full disk) removes its folder. A
checkpoint damaged later (a truncated copy, a bad disk) fails its checksums, and :meth:`Checkpointer.latest` falls
back to the previous one with a warning. The folder must be on a file system shared by all ranks.
"""

import contextlib
import errno
import json
import logging
import os
import pickle
import re
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from dinov2 import distributed
from dinov2.errors import MissingPathError, NoSpaceError, WeightsError
from dinov2.utils.rng import capture_rng_state, reseed_for_rank, restore_rng_state

__all__ = ["Checkpointer", "save_teacher_checkpoint"]

logger = logging.getLogger("dinov2")

_COMPLETE_NAME = re.compile(r"^\d+$")
_META_FILE = "checkpoint.json"


@contextlib.contextmanager
def _single_process_dcp() -> Iterator[bool]:
    """Yields DCP's ``no_dist`` flag; in a single process DCP warns about it although that is our intent."""
    no_dist = not distributed.is_enabled()
    with warnings.catch_warnings():
        if no_dist:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield no_dist


def _on_all_ranks(step: str, fn: Callable[[], None] | None) -> None:
    """Runs ``fn`` (if any) on this rank, then raises on every rank if it failed on any, so that one rank's
    failure (a full disk, a bad extra) never leaves the others waiting forever in a later barrier."""
    error = None
    if fn is not None:
        try:
            fn()
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            error = exc
    failures = [item for item in distributed.all_gather_object(None if error is None else repr(error)) if item]
    if error is not None:
        raise error
    if failures:
        raise RuntimeError(f"checkpoint step {step!r} failed on another rank: {failures[0]}")


def _file_checksums(folder: Path) -> dict[str, list[int]]:
    """``{file name: [size, crc32]}`` of the files of a checkpoint folder (its own json aside)."""
    sums = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != _META_FILE:
            crc = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            sums[path.name] = [path.stat().st_size, crc]
    return sums


def _is_disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed save ran out of space: an ENOSPC anywhere in the error's chain (DCP wraps each rank's
    error; torch.save reports a full disk as a failed write of its archive), confirmed by the free space."""
    seen: list[BaseException] = []
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if isinstance(current, CheckpointException):
            pending += [e[0] if isinstance(e, tuple) else e for e in current.failures.values()]
        pending += [current.__cause__, current.__context__]
    text = " ".join(str(e) for e in seen)
    write_failed = "unexpected pos" in text or "failed writing" in text or "No space left" in text
    return write_failed and shutil.disk_usage(directory).free < 64 * 2**20


def _fsync_dir(path: Path) -> None:
    """Makes a rename durable (best effort: some file systems refuse to open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """Saves and restores model + optimizer (DCP, reshardable) plus per-rank extras, keeping the newest few.

    Every rank must call :meth:`save` and :meth:`load` (they are collective when a process group exists).
    Resume rules for the per-rank extras (RNG states included): with the same world size each rank gets its own
    back; with a different one, rank ``r`` gets those of rank ``r % old_world_size``, and ranks ``r >=
    old_world_size`` then re-seed their RNGs from that state and their rank, so no two ranks share a stream.
    """

    def __init__(self, output_dir: str | Path, *, max_to_keep: int = 3) -> None:
        if not isinstance(max_to_keep, int) or max_to_keep < 0:
            raise ValueError(f"max_to_keep must be an int >= 0 (0 keeps every checkpoint), got {max_to_keep!r}")
        self.directory = Path(output_dir) / "ckpt"
        self.max_to_keep = max_to_keep

    # -- queries --------------------------------------------------------------------------------------------------

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (in-progress ``tmp_*`` folders are ignored)."""
        if not self.directory.is_dir():
            return []
        found = [
            path
            for path in self.directory.iterdir()
            if _COMPLETE_NAME.match(path.name) and (path / _META_FILE).is_file() and (path / ".metadata").is_file()
        ]
        return sorted(found, key=lambda path: int(path.name))

    def latest(self) -> Path | None:
        """The newest complete checkpoint whose files match their recorded sizes and checksums, or None when there
        is none. A newer one that does not match is moved to ``damaged_<name>`` (so that it neither counts for
        pruning nor is tried again) with a warning naming it and what is wrong; when every checkpoint is damaged
        this raises instead of starting over. Rank 0 checks and tells the others (collective with a process group).
        """
        found, error = self._newest_intact() if distributed.is_main_process() else (None, None)
        found, error = distributed.broadcast_object((found, error))
        if error:
            raise WeightsError(error)
        return None if found is None else Path(found)

    def _newest_intact(self) -> tuple[str | None, str | None]:
        complete = self.complete_checkpoints()
        for path in reversed(complete):
            problem = self.verify(path)
            if problem is None:
                return str(path), None
            damaged = path.with_name(f"damaged_{path.name}")
            shutil.rmtree(damaged, ignore_errors=True)
            os.replace(path, damaged)
            logger.warning(
                "checkpoint %s is damaged (%s): moved to %s, using the one before it", path, problem, damaged
            )
        if complete:
            return None, (
                f"every checkpoint under {self.directory} is damaged (moved to damaged_*): restore them, or start "
                "over with --no-resume or another --output-dir"
            )
        return None, None

    @staticmethod
    def verify(path: Path) -> str | None:
        """What is wrong with the files of checkpoint ``path`` compared with what was saved, or None. (Checkpoints
        saved before checksums were recorded pass.)"""
        try:
            recorded = json.loads((path / _META_FILE).read_text()).get("files")
        except (OSError, ValueError) as e:
            return f"{_META_FILE} is unreadable: {e}"
        if recorded is None:
            return None
        try:
            actual = _file_checksums(path)
        except OSError as e:
            return f"its files are unreadable: {e}"
        for name, (size, crc) in recorded.items():
            if name not in actual:
                return f"{name} is missing"
            if actual[name][0] != size:
                return f"{name} has {actual[name][0]} bytes, {size} when saved"
            if actual[name][1] != crc:
                return f"{name} differs from what was saved (checksum)"
        return None

    # -- save -----------------------------------------------------------------------------------------------------

    def save(
        self,
        iteration: int,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Writes checkpoint ``<dir>/<iteration:07d>`` atomically and prunes old ones; returns its path.

        ``extra`` (picklable, per rank) is stored with ``iteration`` and ``rng`` (this rank's RNG states, captured
        here; they replace same-named keys of ``extra``); a grad scaler's ``state_dict()`` or the data position
        belong there.
        """
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"extra must be a dict of picklable values, got {type(extra).__name__}")
        rank, world_size = distributed.get_global_rank(), distributed.get_global_size()
        final = self.directory / f"{iteration:07d}"
        tmp = self.directory / f"tmp_{iteration:07d}"

        def prepare() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob("tmp_*"):  # left by an interrupted save
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()

        def write_extra() -> None:
            rank_extra = {**(extra or {}), "iteration": iteration, "rng": capture_rng_state()}
            torch.save(rank_extra, tmp / f"extra_rank_{rank}.pt")

        def publish() -> None:
            meta = {"iteration": iteration, "world_size": world_size, "files": _file_checksums(tmp)}
            (tmp / _META_FILE).write_text(json.dumps(meta))
            self._publish(tmp, final)
            self._prune()

        try:
            _on_all_ranks("prepare", prepare if rank == 0 else None)
            with _single_process_dcp() as no_dist:  # DCP itself raises on every rank if one fails
                dcp.save(self._state_dict(model, optimizer), checkpoint_id=tmp, no_dist=no_dist)
            _on_all_ranks("write extras", write_extra)
            _on_all_ranks("publish", publish if rank == 0 else None)  # nobody reads the folder before its rename
        except (Exception, CheckpointException) as error:  # (DCP's exception is a BaseException)
            # Every step raises on every rank, so all ranks are here: agree on the cause, judged before the partial
            # folder (of no use, and on a full disk holding the space a retry needs) is removed.
            full = any(distributed.all_gather_object(_is_disk_full(error, self.directory)))
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise self._no_space_error(final, model, optimizer) from error
            raise
        logger.info("saved checkpoint %s", final)
        return final

    def _no_space_error(self, final: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> NoSpaceError:
        complete = self.complete_checkpoints()  # not latest(): no verification reads on the error path
        previous = complete[-1] if complete else None
        if previous is not None:
            needed = sum(f.stat().st_size for f in previous.iterdir() if f.is_file())
        else:  # parameters, and AdamW's two moments (a lower bound when sharded: this rank's part)
            needed = sum(p.numel() * p.element_size() for p in model.parameters()) * (3 if optimizer else 1)
        free = shutil.disk_usage(self.directory).free
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        return NoSpaceError(
            errno.ENOSPC,
            f"no space left on device while saving {final} (needs about {needed / 2**20:.0f} MB, "
            f"{free / 2**20:.0f} MB free); the partial folder was removed and {kept}. Free some space or point "
            "--output-dir to a larger disk, then run the same command again to resume",
        )

    @staticmethod
    def _state_dict(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        if optimizer is None:
            return {"model": get_model_state_dict(model)}
        model_state, optimizer_state = get_state_dict(model, optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        """Renames the finished folder into place; an older one with the same name is replaced, not merged."""
        trash = final.with_name(f"tmp_replaced_{final.name}")
        if final.exists():
            os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(trash, ignore_errors=True)

    def _prune(self) -> None:
        if self.max_to_keep == 0:
            return
        for old in self.complete_checkpoints()[: -self.max_to_keep]:
            shutil.rmtree(old, ignore_errors=True)
            logger.info("removed old checkpoint %s", old)

    # -- load -----------------------------------------------------------------------------------------------------

    def load(
        self,
        path: str | Path,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        restore_rng: bool = True,
        model_only: bool = False,
    ) -> dict[str, Any]:
        """Loads model (and optimizer) state in place, resharding to the current world size, restores this rank's
        RNG states (unless ``restore_rng`` is False) and returns its extras: the caller's, ``iteration`` and
        ``rng`` (this rank's RNG states, for :func:`restore_rng_state`). ``model_only`` reads the model tensors
        and nothing else (``MODEL.WEIGHTS``), and returns {}.

        Nothing read can run code: DCP's metadata goes through an unpickler that accepts only DCP's metadata
        types, its non-tensor items and the extras load with ``weights_only=True``."""
        path = Path(path)
        if not (path / _META_FILE).is_file() or not (path / ".metadata").is_file():
            complete = self.complete_checkpoints()
            latest = complete[-1] if complete else None
            raise MissingPathError(
                f"{path} is not a complete checkpoint (no {_META_FILE} or .metadata); "
                f"the newest complete one here is {latest}"
            )
        meta = json.loads((path / _META_FILE).read_text())
        state = self._state_dict(model, None if model_only else optimizer)
        with _single_process_dcp() as no_dist:
            try:
                dcp.load(state, storage_reader=_SafeReader(path), planner=_SafeLoadPlanner(), no_dist=no_dist)
            except CheckpointException as e:  # DCP wraps each rank's error with its traceback: keep the reason
                reasons = sorted(
                    {str(error[0] if isinstance(error, tuple) else error) for error in e.failures.values()}
                )
                raise WeightsError(f"could not load checkpoint {path}: {'; '.join(reasons)}") from e
        if optimizer is None or model_only:
            set_model_state_dict(model, state["model"])
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        if model_only:
            return {}
        return _extras_for_this_rank(path, int(meta["world_size"]), restore_rng)


def _extras_for_this_rank(path: Path, old_world_size: int, restore_rng: bool) -> dict[str, Any]:
    """This rank's extras of checkpoint ``path`` (those of rank ``rank % old_world_size``), with the RNG states
    restored when ``restore_rng``; a rank that borrowed another's states gets fresh, distinct ones."""
    rank = distributed.get_global_rank()
    source_rank = rank % old_world_size
    extra = load_extras(path / f"extra_rank_{source_rank}.pt")
    if rank >= old_world_size:
        # This rank borrowed another rank's RNG state: derive a distinct one, and return it in extra["rng"]
        # so that a caller re-applying extra["rng"] later (after building its data iterator) gets it too.
        current = capture_rng_state()
        restore_rng_state(extra["rng"])
        reseed_for_rank(rank)
        extra["rng"] = capture_rng_state()
        if not restore_rng:
            restore_rng_state(current)
    elif restore_rng:
        restore_rng_state(extra["rng"])
    if old_world_size != distributed.get_global_size():
        logger.info(
            "resumed %s saved by %d ranks on %d ranks (extras of rank %d used here)",
            path,
            old_world_size,
            distributed.get_global_size(),
            source_rank,
        )
    return extra


# What DCP's ``.metadata`` pickle may reference (read off the files torch writes); anything else is refused.
_DCP_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "ChunkStorageMetadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"checkpoint metadata refers to {module}.{name}, which is not a DCP metadata type: refusing to load it"
        )


class _SafeReader(FileSystemReader):
    """DCP's file reader with the metadata unpickled by :class:`_MetadataUnpickler` (DCP uses ``pickle.load``,
    which runs whatever the file says)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = Path(self.path) / ".metadata"
        with path.open("rb") as handle:
            try:
                metadata = _MetadataUnpickler(handle).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
                raise WeightsError(f"{path} is not a readable DCP checkpoint metadata file: {e}") from e
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(DefaultLoadPlanner):
    """Non-tensor items (optimizer hyper-parameters) read with ``weights_only=True`` (DCP's default planner
    unpickles them unrestricted)."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        # Checked with the weights-only unpickler first (it refuses any other global), then handed to DCP's own
        # code, which re-reads the same, now known-harmless bytes.
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(f"checkpoint item {read_item.dest_index.fqn} holds more than plain values: {e}") from e
        value.seek(0)
        super().load_bytes(read_item, value)


# numpy's RNG state is an array: these globals rebuild plain arrays and nothing else (the reconstruct function is
# taken from the array's own pickle recipe, whichever numpy module holds it).
_NUMPY_ARRAY_GLOBALS = [np.ndarray((0,)).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_extras(path: Path) -> dict[str, Any]:
    """A checkpoint's ``extra_rank_<r>.pt`` (iteration, RNG states, data position), loaded ``weights_only`` with
    numpy arrays allowed (python's and numpy's RNG states are tuples holding one)."""
    with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(
                f"{path} holds objects a checkpoint's extras never hold; refusing to load it: {e}"
            ) from e
        except Exception as e:  # a truncated or overwritten file
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WeightsError(f"{path} is damaged ({reason}); resume from an earlier checkpoint") from e


def save_teacher_checkpoint(
    path: str | Path, state_dict: dict[str, torch.Tensor], backbone_args: dict[str, Any] | None = None
) -> None:
    """Rank 0 writes ``{"teacher": state_dict}`` to ``path`` atomically (temporary file + rename), the format the
    eval scripts load with ``checkpoint_key="teacher"``, plus ``"backbone_args"`` (plain values) when given, so the
    file says which model it fits. Other ranks do nothing."""
    if not distributed.is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    content: dict[str, Any] = {"teacher": {key: value.detach().cpu() for key, value in state_dict.items()}}
    if backbone_args is not None:
        content["backbone_args"] = dict(backbone_args)
    torch.save(content, tmp)
    os.replace(tmp, path)
