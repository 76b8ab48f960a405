import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from dinov2.eval.metrics import AccuracyAveraging, build_topk_accuracy_metric
from dinov2.eval.utils import (
    ModelWithIntermediateLayers,
    ModelWithNormalize,
    append_results,
    evaluate,
    extract_features,
    make_inference_data_loader,
)


class IndexDataset(Dataset):
    """Sample i is the vector [i, 2i, 3i] with label i % 3."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([i, 2 * i, 3 * i], dtype=torch.float32), i % 3


class Doubler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_extract_features_keeps_dataset_order_and_labels(device):
    model = Doubler().to(device)
    features, labels = extract_features(model, IndexDataset(10), batch_size=4, num_workers=0)
    expected = torch.arange(10.0)[:, None] * torch.tensor([2.0, 4.0, 6.0])
    torch.testing.assert_close(features.cpu(), expected)
    assert labels.tolist() == [i % 3 for i in range(10)]
    assert features.device.type == device.type


def test_extract_features_gather_on_cpu(device):
    features, labels = extract_features(Doubler().to(device), IndexDataset(5), 2, 0, gather_on_cpu=True)
    assert features.device.type == "cpu" and labels.device.type == "cpu"
    assert features.shape == (5, 3)


def test_model_with_normalize_gives_unit_rows():
    out = ModelWithNormalize(nn.Identity())(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_model_with_intermediate_layers_calls_backbone_without_grad():
    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def get_intermediate_layers(self, x, n, return_class_token):
            assert return_class_token
            return tuple((x * self.w, x.mean(dim=1) * self.w) for _ in range(n))

    backbone = Backbone().train()
    wrapper = ModelWithIntermediateLayers(backbone, n_last_blocks=4)
    out = wrapper(torch.ones(2, 5, 3))
    assert not backbone.training
    assert len(out) == 4 and out[0][0].shape == (2, 5, 3) and out[0][1].shape == (2, 3)
    assert not out[0][0].requires_grad


def test_evaluate_with_postprocessors_and_criterion():
    class Fixed(nn.Module):
        def forward(self, x):
            return x  # the samples are the logits

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    targets = torch.tensor([0, 0, 0, 1])
    dataset = list(zip(logits, targets))
    loader = make_inference_data_loader(dataset, batch_size=3, num_workers=0)
    metrics = {"m": build_topk_accuracy_metric(AccuracyAveraging.MEAN_ACCURACY, num_classes=2, ks=(1,))}
    post = {"m": lambda out, tgt: {"preds": out, "target": tgt}}
    stats, results = evaluate(Fixed(), loader, post, metrics, torch.device("cpu"), criterion=nn.CrossEntropyLoss())
    assert results["m"]["top-1"].item() == pytest.approx(0.75)
    assert stats["loss"] == pytest.approx(nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)


def test_extract_features_reports_short_loader():
    from dinov2.eval.utils import DatasetWithIndex, extract_features_with_dataloader

    loader = make_inference_data_loader(DatasetWithIndex(IndexDataset(3)), batch_size=2, num_workers=0)
    with pytest.raises(RuntimeError, match="got no feature"):
        extract_features_with_dataloader(Doubler(), loader, sample_count=5)


def test_append_results_appends_json_lines_on_the_main_process_only(tmp_path, monkeypatch):
    from dinov2 import distributed

    path = tmp_path / "new_dir" / "results.json"
    append_results(str(path), [{"a": 1.5}])
    append_results(str(path), [{"b": "x"}, {"c": [1]}], iteration=7)
    lines = path.read_text().splitlines()
    assert lines[0] == '{"a": 1.5}' and lines[1] == "iter: 7" and lines[-1] == ""
    assert [json.loads(line) for line in lines[2:4]] == [{"b": "x"}, {"c": [1]}]
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    append_results(str(path), [{"d": 0}])
    assert path.read_text().splitlines() == lines
