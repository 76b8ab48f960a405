"""The training entry point end to end on tiny images: learning, exact resume, crash-safe checkpoints, teacher export,
non-finite losses, stop signals, schedules and the seeded data stream."""

import json
import os
import signal
import statistics
from pathlib import Path

import pytest
import torch

from dinov2.fsdp.checkpointer import Checkpointer
from dinov2.hub.backbones import _make_dinov2_model
from dinov2.train import SSLMetaArch, main
from dinov2.train import train as train_module
from dinov2.train.train import NonFiniteLossError, build_data_loader, build_optimizer, build_schedulers, do_test
from tests.train.conftest import TINY_DEPTH, make_args, make_cfg

_TRAIN_STEP = train_module.train_step


class _Recorder:
    """Wraps ``train_step`` to record each iteration's rank-mean losses; ``hook(iteration)`` runs before a step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hook=None) -> None:
        self.losses: list[dict[str, float]] = []
        self.hook = hook
        original = _TRAIN_STEP  # not the current attribute: a new recorder replaces the previous one

        def wrapped(cfg, model, optimizer, data, scheduled, stop_request):
            if self.hook is not None:
                self.hook(len(self.losses))
            result = original(cfg, model, optimizer, data, scheduled, stop_request)
            self.losses.append(result.losses)
            return result

        monkeypatch.setattr(train_module, "train_step", wrapped)


def _load_checkpoint(path: Path, output_dir: Path, image_root: Path) -> tuple[dict, dict]:
    """Model and optimizer state dicts of a checkpoint, loaded into a fresh single-process model."""
    cfg = make_cfg(output_dir, image_root)
    model = SSLMetaArch(cfg)
    optimizer = build_optimizer(cfg, model.get_params_groups())
    Checkpointer(output_dir).load(path, model=model, optimizer=optimizer, restore_rng=False)
    return model.state_dict(), optimizer.state_dict()


def _assert_same_states(first: tuple[dict, dict], second: tuple[dict, dict]) -> None:
    (model_a, optim_a), (model_b, optim_b) = first, second
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    for index, state in optim_a["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(optim_b["state"][index][name])), (index, name)


@pytest.mark.slow
def test_training_lowers_the_loss(tmp_path: Path, image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the teacher frozen (momentum 1) and stateless Sinkhorn-Knopp targets at a fixed temperature, the
    student must learn to match the teacher: the loss of the last 3 of 8 iterations is clearly below the first 3.
    (With a moving teacher and center the loss of a few iterations is no monotone signal.)"""
    recorder = _Recorder(monkeypatch)
    opts = (
        "optim.base_lr=0.05",
        "train.OFFICIAL_EPOCH_LENGTH=8",
        "dino.koleo_loss_weight=0",
        "teacher.momentum_teacher=1.0",
        "teacher.warmup_teacher_temp=0.07",
        "train.centering=sinkhorn_knopp",
    )
    result = main(make_args(tmp_path, image_root, *opts))
    totals = [sum(losses.values()) for losses in recorder.losses]
    assert len(totals) == 8 and result["iteration"] == 7 and not result["stopped"]
    assert sum(totals[-3:]) / 3 < 0.9 * sum(totals[:3]) / 3, totals
    lines = [json.loads(line) for line in (tmp_path / "training_metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 7]
    assert lines[-1]["total_loss"] == pytest.approx(statistics.median_low(totals), rel=1e-6)  # window median
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "ckpt" / "0000007").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("per_batch", ["colours", "colours, fast crops", "nothing"])
def test_resume_after_a_crash_in_a_checkpoint_save_is_exact(
    tmp_path: Path, image_root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: str
) -> None:
    """6 iterations straight vs a run killed while saving iteration 5 (its tmp_ folder is left behind), resumed
    from the complete checkpoint of iteration 2: identical losses, weights, optimizer state and loss centers, with
    the colours drawn per image or per batch, and the crops cut by torchvision or by the fast path."""
    opts = (
        "train.saveckp_freq=3",
        f"crops.color_on_batch={per_batch != 'nothing'}",
        f"crops.fast_crops={'fast crops' in per_batch}",
    )
    straight = _Recorder(monkeypatch)
    main(make_args(tmp_path / "straight", image_root, *opts))

    interrupted = _Recorder(monkeypatch)
    publish = Checkpointer._publish

    def killed_at_5(tmp: Path, final: Path) -> None:
        if final.name == "0000005":
            raise KeyboardInterrupt("killed while saving")
        publish(tmp, final)

    monkeypatch.setattr(Checkpointer, "_publish", staticmethod(killed_at_5))
    with pytest.raises(KeyboardInterrupt):
        main(make_args(tmp_path / "resumed", image_root, *opts))
    assert (tmp_path / "resumed" / "ckpt" / "tmp_0000005").is_dir()
    assert Checkpointer(tmp_path / "resumed").latest().name == "0000002"
    monkeypatch.setattr(Checkpointer, "_publish", staticmethod(publish))

    resumed = _Recorder(monkeypatch)
    result = main(make_args(tmp_path / "resumed", image_root, *opts))
    assert result["iteration"] == 5
    assert interrupted.losses[:3] + resumed.losses == straight.losses
    assert not (tmp_path / "resumed" / "ckpt" / "tmp_0000005").exists()
    _assert_same_states(
        _load_checkpoint(tmp_path / "straight" / "ckpt" / "0000005", tmp_path / "straight", image_root),
        _load_checkpoint(tmp_path / "resumed" / "ckpt" / "0000005", tmp_path / "resumed", image_root),
    )


@pytest.mark.slow
def test_exported_teacher_loads_strictly_into_the_hub_backbone(tmp_path: Path, image_root: Path) -> None:
    main(make_args(tmp_path, image_root, "evaluation.eval_period_iterations=3"))
    exports = sorted(path.parent.name for path in (tmp_path / "eval").glob("*/teacher_checkpoint.pth"))
    assert exports == ["training_2", "training_5"]
    path = tmp_path / "eval" / "training_5" / "teacher_checkpoint.pth"
    teacher = torch.load(path, weights_only=True)["teacher"]
    backbone = _make_dinov2_model(
        arch_name="vit_tiny", img_size=32, patch_size=8, init_values=1e-5, depth=TINY_DEPTH, weights=str(path)
    )
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, teacher[f"backbone.{key}"]), key
    assert any(key.startswith("dino_head.") for key in teacher)  # heads are exported too (ignored by the hub)

    args = make_args(tmp_path, image_root)
    args.eval_only = True
    assert main(args) == {"iteration": 5}
    manual = torch.load(tmp_path / "eval" / "manual_5" / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    assert manual.keys() == teacher.keys() and all(torch.equal(manual[k], teacher[k]) for k in teacher)


def test_teacher_export_of_a_chunked_model_has_flat_block_keys(tmp_path: Path, image_root: Path) -> None:
    cfg = make_cfg(tmp_path, image_root, "student.block_chunks=2")
    model = SSLMetaArch(cfg)
    assert "teacher.backbone.blocks.1.1.norm1.weight" in model.state_dict()
    teacher = torch.load(do_test(cfg, model, "manual"), weights_only=True)["teacher"]
    assert "backbone.blocks.1.norm1.weight" in teacher and "backbone.blocks.1.1.norm1.weight" not in teacher
    flat = _make_dinov2_model(
        arch_name="vit_tiny", img_size=32, patch_size=8, init_values=1e-5, depth=TINY_DEPTH, pretrained=False
    )
    flat.load_state_dict({k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")})


@pytest.mark.slow
@pytest.mark.parametrize("max_nan_steps", [0, 1])
def test_non_finite_loss_names_the_term_and_iteration(
    tmp_path: Path, image_root: Path, monkeypatch: pytest.MonkeyPatch, max_nan_steps: int
) -> None:
    """KoLeo returns NaN from iteration 1 on: the run stops at iteration 1 + max_nan_steps with a diagnostic file."""
    koleo_forward = train_module.SSLMetaArch.compute_losses
    calls = []

    def nan_koleo(self, batch, targets, outputs):
        losses = koleo_forward(self, batch, targets, outputs)
        calls.append(1)
        if len(calls) > 1:
            losses["koleo_loss"] = losses["koleo_loss"] * float("nan")
        return losses

    monkeypatch.setattr(train_module.SSLMetaArch, "compute_losses", nan_koleo)
    stop_at = 1 + max_nan_steps
    with pytest.raises(NonFiniteLossError, match=rf"koleo_loss at iteration {stop_at} "):
        main(make_args(tmp_path, image_root, f"train.max_nan_steps={max_nan_steps}"))
    record = json.loads((tmp_path / f"nan_diagnostics_{stop_at}.json").read_text())
    assert record["non_finite_terms"] == ["koleo_loss"] and record["ranks_with_non_finite_loss"] == [0]
    assert record["schedules"]["lr"] > 0


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(
    tmp_path: Path, image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def send_sigterm(iteration: int) -> None:
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    _Recorder(monkeypatch, hook=send_sigterm)
    previous = signal.getsignal(signal.SIGTERM)
    result = main(make_args(tmp_path, image_root))
    assert result["stopped"] and result["iteration"] == 1
    assert Checkpointer(tmp_path).latest().name == "0000001"
    assert signal.getsignal(signal.SIGTERM) == previous  # the training's handler is removed again
    resumed = _Recorder(monkeypatch)
    assert main(make_args(tmp_path, image_root))["iteration"] == 5
    assert len(resumed.losses) == 4  # iterations 2..5


def test_schedules_follow_the_reference_table(tmp_path: Path, image_root: Path) -> None:
    opts = (
        "train.OFFICIAL_EPOCH_LENGTH=10",
        "optim.epochs=4",
        "optim.warmup_epochs=1",
        "optim.freeze_last_layer_epochs=2",
        "teacher.warmup_teacher_temp_epochs=2",
    )
    cfg = make_cfg(tmp_path, image_root, *opts)
    lr, wd, momentum, teacher_temp, last_layer_lr = build_schedulers(cfg)
    assert len(lr) == 40 and lr[0] == 0 and lr[9] == pytest.approx(cfg.optim.lr)
    assert cfg.optim.min_lr < lr[39] < 0.01 * cfg.optim.lr and lr[100] == cfg.optim.min_lr
    assert wd[0] == pytest.approx(0.04) and wd[39] == pytest.approx(0.4, rel=0.01)
    assert momentum[0] == pytest.approx(0.992) and momentum[39] == pytest.approx(1.0, abs=1e-4)
    assert teacher_temp[0] == pytest.approx(0.04) and teacher_temp[19] == pytest.approx(0.07)
    assert teacher_temp[35] == pytest.approx(0.07)
    assert all(last_layer_lr[i] == 0 for i in range(20)) and last_layer_lr[25] == pytest.approx(lr[25])


def test_data_stream_is_seeded_per_sample(tmp_path: Path, image_root: Path) -> None:
    """Batch 2 of a fresh stream equals the first batch of a stream started at iteration 2, whatever the main
    process's RNG state and the number of workers."""
    cfg = make_cfg(tmp_path, image_root)
    batches = iter(build_data_loader(cfg))
    next(batches), next(batches)
    expected = next(batches)
    torch.manual_seed(123)
    cfg_workers = make_cfg(tmp_path, image_root, "train.num_workers=2")
    resumed = next(iter(build_data_loader(cfg_workers, start_iter=2)))
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, resumed[key]), key
        else:
            assert value == resumed[key], key
    other = next(iter(build_data_loader(cfg, start_iter=3)))
    assert not torch.equal(other["collated_global_crops"], expected["collated_global_crops"])


def test_model_weights_load_the_model_only_when_there_is_nothing_to_resume(tmp_path: Path, image_root: Path) -> None:
    cfg = make_cfg(tmp_path / "first", image_root)
    source = SSLMetaArch(cfg)
    with torch.no_grad():
        source.student.backbone.cls_token.fill_(0.25)
    path = Checkpointer(tmp_path / "first").save(7, model=source)
    cfg = make_cfg(tmp_path / "second", image_root, f"MODEL.WEIGHTS={path}")
    model = SSLMetaArch(cfg)
    optimizer = build_optimizer(cfg, model.get_params_groups())
    checkpointer = Checkpointer(tmp_path / "second")
    assert train_module._resume_or_load(cfg, model, optimizer, checkpointer, resume=True) == (0, None)
    assert torch.equal(model.student.backbone.cls_token, source.student.backbone.cls_token)


@pytest.mark.parametrize("precision, scaled", [("bf16", False), ("fp16", True)])
def test_mixed_precision_step_in_one_process(tmp_path: Path, image_root: Path, precision: str, scaled: bool) -> None:
    """Autocast in one process; the loss scaler exists only with fp16 (grad_scaler=true in both cases)."""
    parts = ("backbone", "dino_head", "ibot_head")
    opts = [
        f"compute_precision.{m}.{p}.mixed_precision.param_dtype={precision}"
        for m in ("student", "teacher")
        for p in parts
    ]
    cfg = make_cfg(tmp_path, image_root, *opts, "compute_precision.grad_scaler=true")
    model = SSLMetaArch(cfg)
    model.train()
    assert (model.fp16_scaler is not None) == scaled
    if scaled:  # the default initial scale 2**16 overflows (and skips) the first steps of this untrained model
        model.fp16_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6)
    optimizer = build_optimizer(cfg, model.get_params_groups())
    before = model.student.backbone.cls_token.detach().clone()
    data = next(iter(build_data_loader(cfg)))
    result = train_module.train_step(
        cfg, model, optimizer, data, train_module.scheduled_values(build_schedulers(cfg), 1)
    )
    assert not result.bad_ranks and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert model.student.backbone.cls_token.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(model.student.backbone.cls_token, before)


def test_optimizer_is_fused_and_steps_like_foreach_adamw(tmp_path: Path, image_root: Path) -> None:
    """The fused AdamW (one kernel on CPU) applies the same update as the foreach one, per parameter group (lr, weight
    decay) over two steps, so the speed-up changes no result beyond float rounding."""
    cfg = make_cfg(tmp_path, image_root)
    groups = SSLMetaArch(cfg).get_params_groups()
    fused = build_optimizer(cfg, groups)
    assert fused.defaults["fused"]
    params = [p for group in groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    copies = iter([p.detach().clone().requires_grad_(True) for p in params])
    # Only the parameters: the optimizer filled each group dict with its own settings (fused among them).
    reference_groups = [{"params": [next(copies) for _ in group["params"]]} for group in groups]
    reference = torch.optim.AdamW(reference_groups, betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2), foreach=True)
    for optimizer in (fused, reference):
        for index, group in enumerate(optimizer.param_groups):
            group["lr"], group["weight_decay"] = 1e-2 * (index + 1), 0.05 * index
    copied = [p for group in reference_groups for p in group["params"]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for param, copy in zip(params, copied):
            param.grad = torch.randn(param.shape, generator=generator)
            copy.grad = param.grad.clone()
        fused.step()
        reference.step()
    for param, copy, old in zip(params, copied, before):
        assert not torch.equal(param, old)
        torch.testing.assert_close(param.detach(), copy.detach(), rtol=1e-5, atol=1e-6)
