"""Each kind of unusable weights file gets its own message naming the file; nothing in a file runs."""

import os
from pathlib import Path

import pytest
import torch

from dinov2.errors import MissingPathError, UserError, WeightsError
from dinov2.models import vision_transformer as vits
from dinov2.models.weights import hub_cache_path, load_pretrained_weights, load_state_dict_from_url_or_path


class _Payload:
    """Unpickling this creates the file ``path``: proof that code from the checkpoint ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _vit() -> vits.DinoVisionTransformer:
    return vits.DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2).eval()


def _good(path: Path) -> Path:
    torch.save({"teacher": _vit().state_dict()}, path)
    return path


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.pth"
    path.write_bytes(b"\x00" + os.urandom(4095))  # not a pickle opcode first
    with pytest.raises(WeightsError, match=rf"^{path} is not a PyTorch weights file \(4096 bytes"):
        load_state_dict_from_url_or_path(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    data = _good(tmp_path / "good.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=rf"^{path} is a damaged or truncated PyTorch checkpoint"):
        load_state_dict_from_url_or_path(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match=rf"^{path} is empty \(0 bytes\)"):
        load_state_dict_from_url_or_path(path)


def test_pickled_objects_are_refused_and_never_run(tmp_path: Path) -> None:
    ran = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"teacher": _vit().state_dict(), "extra": _Payload(ran)}, path)
    with pytest.raises(WeightsError, match=rf"^{path} holds Python objects other than tensors") as error:
        load_pretrained_weights(_vit(), str(path), "teacher")
    assert "weights_only=False" not in str(error.value)  # no advice to unpickle it unsafely
    assert not ran.exists()


def test_foreign_checkpoint_lists_what_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match=rf"^{path} lacks \d+ keys of the model"):
        load_pretrained_weights(_vit(), str(path), "teacher")


def test_a_checkpoint_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"teacher": {"iteration": 3}}, path)
    with pytest.raises(WeightsError, match=rf"^{path} holds no tensors"):
        load_pretrained_weights(_vit(), str(path), "teacher")


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(MissingPathError, match="does not exist") as error:
        load_state_dict_from_url_or_path(tmp_path / "nothing.pth")
    assert isinstance(error.value, UserError) and isinstance(error.value, FileNotFoundError)


def test_a_bad_file_in_the_hub_cache_names_the_url_and_the_cache_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = "https://example.invalid/dinov2/some_weights.pth"
    cached = hub_cache_path(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html>not found</html>")
    with pytest.raises(WeightsError, match=rf"^{url} \(cached at {cached}\) is not a PyTorch weights file"):
        load_state_dict_from_url_or_path(url)


def test_a_good_file_loads(tmp_path: Path) -> None:
    source = _good(tmp_path / "good.pth")
    model = _vit()
    load_pretrained_weights(model, str(source), "teacher")
    state = torch.load(source, weights_only=True)["teacher"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_linear_eval_resume_reads_weights_only(tmp_path: Path) -> None:
    from dinov2.eval.linear import Checkpointer

    ran = tmp_path / "payload_ran"
    torch.save({"model": {}, "iteration": _Payload(ran)}, tmp_path / "model_0000009.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    checkpointer = Checkpointer(torch.nn.Linear(2, 2), str(tmp_path), save_to_disk=False)
    with pytest.raises(WeightsError, match="holds Python objects other than tensors"):
        checkpointer.resume_or_load("", resume=True)
    assert not ran.exists()


def _load_with_hub_backbone(path: Path) -> None:
    import hubconf

    hubconf.dinov2_vits14(weights=str(path), depth=2, img_size=28)


def _load_with_hub_head(path: Path) -> None:
    import hubconf

    hubconf.dinov2_vits14_ld(pretrained=False, head_weights=str(path), depth=2, img_size=28)


def _load_with_eval_cli_model(path: Path) -> None:
    from dinov2.configs import load_and_merge_config
    from dinov2.eval.setup import build_model_for_eval

    build_model_for_eval(load_and_merge_config("train/vit_tiny_cpu"), str(path))


def _load_as_student_pretrained_weights(path: Path) -> None:
    from dinov2.configs import load_and_merge_config
    from dinov2.train import SSLMetaArch

    cfg = load_and_merge_config("train/vit_tiny_cpu")
    cfg.student.pretrained_weights = str(path)
    SSLMetaArch(cfg)


def _load_with_visualize(path: Path) -> None:
    from dinov2.tools.visualize import load_backbone

    load_backbone(str(path))


@pytest.mark.parametrize(
    "load",
    [
        _load_with_hub_backbone,
        _load_with_hub_head,
        _load_with_eval_cli_model,
        _load_as_student_pretrained_weights,
        _load_with_visualize,
    ],
)
def test_a_planted_payload_never_runs_at_any_load_site(tmp_path: Path, load) -> None:
    ran = tmp_path / "payload_ran"
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {"pos_embed": torch.zeros(1)}, "backbone_args": _Payload(ran)}, path)
    with pytest.raises(WeightsError, match="holds Python objects other than tensors"):
        load(path)
    assert not ran.exists()
