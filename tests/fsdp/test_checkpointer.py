"""Single-process behaviour of the DCP Checkpointer: round trip, atomicity, pruning, RNG, teacher export."""

import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dinov2.fsdp.checkpointer as checkpointer_module
from dinov2.errors import NoSpaceError, WeightsError
from dinov2.fsdp.checkpointer import Checkpointer, save_teacher_checkpoint
from dinov2.utils.rng import restore_rng_state

_ROOT = Path(__file__).resolve().parents[2]


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("center", torch.zeros(1, 3))


def _trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = _Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.linear(torch.randn(2, 4)).square().sum().backward()
    optimizer.step()
    model.center.add_(seed)
    return model, optimizer


class _FailsWhenPickled:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_round_trip_model_optimizer_extra(tmp_path: Path) -> None:
    model, optimizer = _trained(1)
    checkpointer = Checkpointer(tmp_path)
    path = checkpointer.save(7, model=model, optimizer=optimizer, extra={"scaler": {"scale": 1024.0}})
    assert path == tmp_path / "ckpt" / "0000007" and checkpointer.latest() == path

    fresh, fresh_optimizer = _Model(), None
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    extra = checkpointer.load(path, model=fresh, optimizer=fresh_optimizer)
    assert extra["iteration"] == 7 and extra["scaler"] == {"scale": 1024.0}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert loaded["param_groups"][0]["lr"] == 0.1
    for index, entries in saved["state"].items():
        for name, value in entries.items():
            torch.testing.assert_close(loaded["state"][index][name], value, rtol=0, atol=0)


def test_model_only_and_missing_checkpoint(tmp_path: Path) -> None:
    model, _ = _trained(2)
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.latest() is None
    path = checkpointer.save(0, model=model)
    fresh = _Model()
    checkpointer.load(path, model=fresh)
    assert torch.equal(fresh.linear.weight, model.linear.weight)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpointer.load(tmp_path / "ckpt" / "0000099", model=fresh)


def test_rng_states_restored(tmp_path: Path) -> None:
    model, _ = _trained(3)
    checkpointer = Checkpointer(tmp_path)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    checkpointer.save(1, model=model)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    checkpointer.load(checkpointer.latest(), model=model)
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1]) and random.random() == expected[2]
    torch.manual_seed(9)
    extra = checkpointer.load(checkpointer.latest(), model=model, restore_rng=False)
    assert torch.equal(torch.rand(2), torch.rand(2, generator=torch.Generator().manual_seed(9)))  # untouched
    restore_rng_state(extra["rng"])
    assert torch.equal(torch.rand(2), expected[0])


def test_max_to_keep_prunes_oldest(tmp_path: Path) -> None:
    model, _ = _trained(4)
    checkpointer = Checkpointer(tmp_path, max_to_keep=2)
    for iteration in (10, 20, 30):
        checkpointer.save(iteration, model=model)
    names = sorted(path.name for path in (tmp_path / "ckpt").iterdir())
    assert names == ["0000020", "0000030"]
    keep_all = Checkpointer(tmp_path, max_to_keep=0)
    for iteration in (40, 50, 60):
        keep_all.save(iteration, model=model)
    assert len(keep_all.complete_checkpoints()) == 5
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=-1)


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    model, _ = _trained(5)
    checkpointer = Checkpointer(tmp_path, max_to_keep=1)
    good = checkpointer.save(1, model=model)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpointer.save(2, model=model, extra={"bomb": _FailsWhenPickled()})
    assert sorted(path.name for path in (tmp_path / "ckpt").iterdir()) == ["0000001"]  # the partial one removed
    assert checkpointer.latest() == good
    fresh = _Model()
    checkpointer.load(checkpointer.latest(), model=fresh)
    assert torch.equal(fresh.linear.weight, model.linear.weight)
    checkpointer.save(3, model=model)
    assert sorted(path.name for path in (tmp_path / "ckpt").iterdir()) == ["0000003"]


class _Big(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(256, 512)  # 0.5 MB of parameters


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 4 MB file system (a tmpfs, as root) and a way to fill it; without root, a full disk is simulated by
    failing DCP's writes with ENOSPC once the "disk" is filled."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)]).returncode == 0
    )
    filler = folder / "filler"

    def fill(leave_bytes: int) -> None:
        if mounted:
            free = shutil.disk_usage(folder).free
            filler.write_bytes(b"\0" * max(0, free - leave_bytes))
        else:
            original = checkpointer_module.dcp.save

            def failing_save(*args, **kwargs):
                Path(kwargs["checkpoint_id"]).mkdir(parents=True, exist_ok=True)
                (Path(kwargs["checkpoint_id"]) / "__0_0.distcp").write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(checkpointer_module.dcp, "save", failing_save)
            fill.restore = lambda: monkeypatch.setattr(checkpointer_module.dcp, "save", original)

    def empty() -> None:
        filler.unlink(missing_ok=True)
        if hasattr(fill, "restore"):
            fill.restore()

    yield folder, fill, empty
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_disk_full_mid_save_removes_the_partial_folder_and_keeps_the_previous_checkpoint(small_disk) -> None:
    folder, fill, empty = small_disk
    model = _Big()
    optimizer = torch.optim.AdamW(model.parameters())
    model.linear.weight.sum().backward()
    optimizer.step()
    checkpointer = Checkpointer(folder, max_to_keep=2)
    good = checkpointer.save(1, model=model, optimizer=optimizer)

    fill(leave_bytes=300_000)
    with pytest.raises(
        NoSpaceError, match=r"no space left on device while saving .*0000002 \(needs about 2 MB"
    ) as error:
        checkpointer.save(2, model=model, optimizer=optimizer)
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    assert f"the previous checkpoint {good} is intact" in str(error.value)
    assert sorted(path.name for path in (folder / "ckpt").iterdir()) == ["0000001"]  # no partial folder left
    assert checkpointer.latest() == good and checkpointer.verify(good) is None

    empty()  # space freed: the same save now works
    assert checkpointer.save(2, model=model, optimizer=optimizer) == folder / "ckpt" / "0000002"
    fresh = _Big()
    checkpointer.load(checkpointer.latest(), model=fresh)
    assert torch.equal(fresh.linear.weight, model.linear.weight)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer = _trained(3)
    checkpointer = Checkpointer(tmp_path)
    previous = checkpointer.save(1, model=model, optimizer=optimizer)
    newest = checkpointer.save(2, model=model, optimizer=optimizer)
    shard = next(newest.glob("*.distcp"))
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        shard.unlink()
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        assert checkpointer.latest() == previous
    expected = {"truncate": "bytes, ", "flip": "differs from what was saved", "delete": "is missing"}[damage]
    assert f"checkpoint {newest} is damaged ({shard.name} " in caplog.text and expected in caplog.text


def test_resaving_same_iteration_replaces_it(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    first, _ = _trained(6)
    second, _ = _trained(7)
    checkpointer.save(5, model=first)
    checkpointer.save(5, model=second)
    fresh = _Model()
    checkpointer.load(checkpointer.latest(), model=fresh)
    assert torch.equal(fresh.linear.weight, second.linear.weight)
    assert [path.name for path in (tmp_path / "ckpt").iterdir()] == ["0000005"]


@pytest.mark.slow
def test_sigkill_during_save_leaves_previous_loadable(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(_ROOT)!r})
        from dinov2.fsdp.checkpointer import Checkpointer

        class KillWhenPickled:
            def __reduce__(self):
                os.kill(os.getpid(), signal.SIGKILL)

        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        checkpointer = Checkpointer({str(tmp_path)!r})
        checkpointer.save(1, model=model)
        torch.save(model.state_dict(), {str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            model.weight.add_(1.0)
        checkpointer.save(2, model=model, extra={{"bomb": KillWhenPickled()}})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    checkpointer = Checkpointer(tmp_path)
    assert (tmp_path / "ckpt" / "tmp_0000002").is_dir()
    assert checkpointer.latest() == tmp_path / "ckpt" / "0000001"
    model = nn.Linear(4, 3)
    assert checkpointer.load(checkpointer.latest(), model=model)["iteration"] == 1
    expected = torch.load(tmp_path / "expected.pt")
    assert torch.equal(model.weight, expected["weight"])


def test_save_teacher_checkpoint_format(tmp_path: Path) -> None:
    state = {"backbone.cls_token": torch.randn(1, 1, 8), "dino_head.mlp.0.weight": torch.randn(4, 8)}
    path = tmp_path / "eval" / "training_9" / "teacher_checkpoint.pth"
    save_teacher_checkpoint(path, state)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == ["teacher"] and loaded["teacher"].keys() == state.keys()
    assert all(torch.equal(loaded["teacher"][key], value) for key, value in state.items())
    assert [p.name for p in path.parent.iterdir()] == ["teacher_checkpoint.pth"]  # no temporary file left


class _Payload:
    """Unpickling it runs code: it creates the file ``marker`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _saved(tmp_path: Path) -> tuple[Checkpointer, Path]:
    model, optimizer = _trained(1)
    checkpointer = Checkpointer(tmp_path / "run")
    return checkpointer, checkpointer.save(3, model=model, optimizer=optimizer)


def test_a_planted_extras_payload_never_runs(tmp_path: Path) -> None:
    checkpointer, path = _saved(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"iteration": 3, "evil": _Payload(marker)}, path / "extra_rank_0.pt")
    model, optimizer = _trained(2)
    with pytest.raises(RuntimeError, match="extra_rank_0.pt holds objects"):
        checkpointer.load(path, model=model, optimizer=optimizer)
    assert not marker.exists()
    # Loading the model only (MODEL.WEIGHTS) does not read the extras at all, and works.
    assert checkpointer.load(path, model=model, model_only=True) == {}
    assert torch.equal(model.linear.weight, _trained(1)[0].linear.weight)
    assert not marker.exists()


def test_a_planted_metadata_payload_never_runs(tmp_path: Path) -> None:
    import pickle

    checkpointer, path = _saved(tmp_path)
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    model, optimizer = _trained(2)
    for model_only in (False, True):
        with pytest.raises(RuntimeError, match="not a readable DCP checkpoint metadata file"):
            checkpointer.load(path, model=model, optimizer=optimizer, model_only=model_only)
    assert not marker.exists()


def test_own_checkpoints_still_load_weights_only(tmp_path: Path) -> None:
    checkpointer, path = _saved(tmp_path)
    model, optimizer = _trained(2)
    extra = checkpointer.load(path, model=model, optimizer=optimizer)
    assert extra["iteration"] == 3 and isinstance(extra["rng"]["numpy"][1], np.ndarray)
    assert torch.equal(model.center, _trained(1)[0].center)


def test_a_damaged_checkpoint_is_set_aside_and_all_damaged_is_an_error(tmp_path: Path) -> None:
    model, optimizer = _trained(4)
    checkpointer = Checkpointer(tmp_path, max_to_keep=1)
    only = checkpointer.save(1, model=model, optimizer=optimizer)
    (only / "extra_rank_0.pt").write_bytes(b"overwritten")
    with pytest.raises(WeightsError, match="every checkpoint under .* is damaged"):
        checkpointer.latest()
    assert not only.exists() and (tmp_path / "ckpt" / "damaged_0000001").is_dir()  # kept for inspection
    # set aside, it neither counts for pruning nor hides a later good checkpoint
    assert checkpointer.save(2, model=model, optimizer=optimizer) == checkpointer.latest()
