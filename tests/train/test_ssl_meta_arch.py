"""SSLMetaArch on a tiny ViT: loss keys, crop routing, loss normalisation, teacher EMA, head variants."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinov2.train import SSLMetaArch
from dinov2.train.train import build_data_loader
from tests.train.conftest import make_cfg

ALL_LOSSES = {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"}


def _model_and_batch(tmp_path: Path, image_root: Path, *opts: str) -> tuple[SSLMetaArch, dict]:
    cfg = make_cfg(tmp_path, image_root, *opts)
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    model.train()
    return model, next(iter(build_data_loader(cfg)))


def test_forward_backward_returns_finite_reference_losses(tmp_path: Path, image_root: Path) -> None:
    model, batch = _model_and_batch(tmp_path, image_root)
    losses = model.forward_backward(batch, teacher_temp=0.04)
    assert set(losses) == ALL_LOSSES
    assert all(math.isfinite(value.item()) for value in losses.values())
    assert all(param.grad is not None for param in model.student.parameters())
    assert all(param.grad is None and not param.requires_grad for param in model.teacher.parameters())
    # the teacher starts as a copy of the student
    for (name, student), teacher in zip(model.student.named_parameters(), model.teacher.parameters()):
        torch.testing.assert_close(student, teacher, msg=name)


def test_dino_global_loss_pairs_each_student_crop_with_the_other_teacher_crop(tmp_path: Path, image_root: Path) -> None:
    """Recomputes the global DINO term by hand: softmax-centred teacher targets (center 0 at step 0) of crop 2 vs
    student crop 1 and vice versa, averaged over the 2 + 2 * n_local = 6 view pairs."""
    model, batch = _model_and_batch(tmp_path, image_root, "ibot.loss_weight=0", "dino.koleo_loss_weight=0")
    model.eval()  # same weights in student and teacher, no stochastic depth: identical outputs
    losses = model.forward_backward(batch, teacher_temp=0.05)
    with torch.no_grad():
        crops = batch["collated_global_crops"]
        logits = model.student.dino_head(model.student.backbone(crops))  # [2B, K]
        first, second = logits.chunk(2)
        teacher_probs = F.softmax(torch.cat((second, first)) / 0.05, dim=-1)  # crop 2 targets crop 1
        cross_entropy = -(teacher_probs * F.log_softmax(logits / 0.1, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(losses["dino_global_crops_loss"], cross_entropy * 2 / 6, rtol=1e-5, atol=1e-6)
    assert set(losses) == {"dino_local_crops_loss", "dino_global_crops_loss"}


def test_update_teacher_is_an_ema_by_parameter_name(tmp_path: Path, image_root: Path) -> None:
    model, _ = _model_and_batch(tmp_path, image_root)
    with torch.no_grad():
        for param in model.student.parameters():
            param.add_(1.0)
    before = {name: param.clone() for name, param in model.teacher.named_parameters()}
    model.update_teacher(0.75)
    student = dict(model.student.named_parameters())
    for name, param in model.teacher.named_parameters():
        torch.testing.assert_close(param, 0.75 * before[name] + 0.25 * student[name], msg=name)


@pytest.mark.parametrize(
    "opts, expected",
    [
        (("train.centering=sinkhorn_knopp",), ALL_LOSSES),
        (("ibot.separate_head=true",), ALL_LOSSES),
        (("crops.local_crops_number=0",), ALL_LOSSES - {"dino_local_crops_loss"}),
        # the reference crashed here (no head factory with DINO off); the shared head now serves iBOT alone
        (("dino.loss_weight=0", "dino.koleo_loss_weight=0"), {"ibot_loss"}),
    ],
)
def test_variants_train(tmp_path: Path, image_root: Path, opts: tuple[str, ...], expected: set[str]) -> None:
    model, batch = _model_and_batch(tmp_path, image_root, *opts)
    losses = model.forward_backward(batch, teacher_temp=0.04)
    assert set(losses) == expected
    assert all(math.isfinite(value.item()) for value in losses.values())
    assert ("ibot_head" in model.student) == ("ibot.separate_head=true" in opts)


def test_centers_are_in_the_state_dict_and_move(tmp_path: Path, image_root: Path) -> None:
    model, batch = _model_and_batch(tmp_path, image_root)
    model.forward_backward(batch, teacher_temp=0.04)
    state = model.state_dict()
    assert state["dino_loss.center"].abs().sum() > 0  # the pending update is folded in when saving
    assert state["ibot_patch_loss.center"].abs().sum() > 0
    assert any(key.startswith("teacher.backbone.") for key in state)


@pytest.mark.parametrize(
    "opts, message",
    [
        (("train.centering=softmax",), "train.centering"),
        (("dino.loss_weight=0", "ibot.loss_weight=0"), "enable at least one loss"),
        (("ibot.mask_sample_probability=0",), "ibot.mask_sample_probability"),
    ],
)
def test_bad_configs_are_named(tmp_path: Path, image_root: Path, opts: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SSLMetaArch(make_cfg(tmp_path, image_root, *opts))


def test_pretrained_weights_initialise_student_and_teacher(tmp_path: Path, image_root: Path) -> None:
    """Continued pretraining: a released-style backbone file goes into both backbones; the heads start fresh."""
    cfg = make_cfg(tmp_path, image_root)
    source = SSLMetaArch(cfg)
    with torch.no_grad():
        source.teacher.backbone.cls_token.fill_(0.5)
    path = tmp_path / "backbone.pth"
    torch.save(source.teacher.backbone.state_dict(), path)  # flat keys, as the hub weights
    model = SSLMetaArch(make_cfg(tmp_path, image_root, f"student.pretrained_weights={path}"))
    for part in (model.student, model.teacher):
        for key, value in source.teacher.backbone.state_dict().items():
            assert torch.equal(part.backbone.state_dict()[key], value), key
    # weights made for 48-px inputs (6 x 6 patches): the position embedding is resampled to the 4 x 4 grid
    from dinov2.models import build_model

    large, _ = build_model(make_cfg(tmp_path, image_root).student, only_teacher=True, img_size=48)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in large.state_dict().items()}}, path)
    model = SSLMetaArch(make_cfg(tmp_path, image_root, f"student.pretrained_weights={path}"))
    expected = large.interpolate_pos_encoding(torch.zeros(1, 17, 192), 32, 32)
    torch.testing.assert_close(model.teacher.backbone.pos_embed, expected)
    torch.testing.assert_close(model.student.backbone.blocks[1].mlp.fc2.weight, large.blocks[1].mlp.fc2.weight)
    bad = tmp_path / "other_arch.pth"
    torch.save({"pos_embed": torch.zeros(1, 5, 192)}, bad)
    with pytest.raises(RuntimeError, match="lacks"):
        SSLMetaArch(make_cfg(tmp_path, image_root, f"student.pretrained_weights={bad}"))


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_a_batch_without_masked_tokens_keeps_everything_finite(
    tmp_path: Path, image_root: Path, centering: str
) -> None:
    model, batch = _model_and_batch(tmp_path, image_root, f"train.centering={centering}")
    batch["collated_masks"] = torch.zeros_like(batch["collated_masks"])
    batch["mask_indices_list"] = batch["mask_indices_list"][:0]
    batch["masks_weight"] = batch["masks_weight"][:0]
    batch["n_masked_patches"] = torch.zeros_like(batch["n_masked_patches"])
    for _ in range(2):
        losses = model.forward_backward(batch, teacher_temp=0.04)
    assert losses["ibot_loss"].item() == 0.0
    assert all(math.isfinite(value.item()) for value in losses.values())
    assert torch.isfinite(model.state_dict()["ibot_patch_loss.center"]).all()
