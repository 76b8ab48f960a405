import pytest
import torch

from dinov2.eval.metrics import (
    AccuracyAveraging,
    MetricType,
    build_metric,
    build_topk_accuracy_metric,
)

# 4 samples, 3 classes. Rankings (best first): s0: 2,1,0  s1: 0,1,2  s2: 1,0,2  s3: 2,0,1
PREDS = torch.tensor(
    [
        [0.1, 0.3, 0.6],
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.25, 0.15, 0.6],
    ]
)
TARGET = torch.tensor([2, 1, 1, 0])
# top-1 hits: s0 yes, s1 no, s2 yes, s3 no -> 2/4.  top-2 hits: s0, s1, s2, s3 -> 4/4.
# per class top-1: class0 0/1, class1 1/2, class2 1/1.


def test_micro_topk_matches_hand_count():
    metric = build_topk_accuracy_metric(AccuracyAveraging.MEAN_ACCURACY, num_classes=3, ks=(1, 2))
    metric.update(preds=PREDS[:2], target=TARGET[:2])
    metric.update(preds=PREDS[2:], target=TARGET[2:])
    result = metric.compute()
    assert result["top-1"].item() == pytest.approx(0.5)
    assert result["top-2"].item() == pytest.approx(1.0)


def test_macro_and_per_class():
    per_class = build_topk_accuracy_metric(AccuracyAveraging.PER_CLASS_ACCURACY, num_classes=3, ks=(1,))
    per_class.update(PREDS, TARGET)
    torch.testing.assert_close(per_class.compute()["top-1"], torch.tensor([0.0, 0.5, 1.0]))
    macro = build_topk_accuracy_metric(AccuracyAveraging.MEAN_PER_CLASS_ACCURACY, num_classes=3, ks=(1,))
    macro.update(PREDS, TARGET)
    assert macro.compute()["top-1"].item() == pytest.approx(0.5)


def test_macro_ignores_classes_without_samples():
    macro = build_topk_accuracy_metric(AccuracyAveraging.MEAN_PER_CLASS_ACCURACY, num_classes=4, ks=(1,))
    preds = torch.cat([PREDS, torch.zeros(4, 1)], dim=1)
    macro.update(preds, TARGET)
    assert macro.compute()["top-1"].item() == pytest.approx(0.5)


def test_build_metric_default_ks_and_clipping():
    metric = build_metric(MetricType.MEAN_ACCURACY, num_classes=3)
    assert set(metric.keys()) == {"top-1", "top-5"}
    metric.update(PREDS, TARGET)
    assert metric.compute()["top-5"].item() == pytest.approx(1.0)  # k clipped to the 3 classes


def test_metric_type_strings_and_averaging():
    assert str(MetricType.MEAN_PER_CLASS_ACCURACY) == "mean_per_class_accuracy"
    assert MetricType.PER_CLASS_ACCURACY.accuracy_averaging == AccuracyAveraging.PER_CLASS_ACCURACY
    assert MetricType.IMAGENET_REAL_ACCURACY.accuracy_averaging is None


def test_imagenet_real_multi_label():
    metric = build_metric(MetricType.IMAGENET_REAL_ACCURACY, num_classes=3, ks=(1,))
    target = torch.tensor([[2, -1], [1, 2], [-1, -1], [1, 2]])
    # s0 top1=2 hit; s1 top1=0 miss; s2 ignored (no label); s3 top1=2 hit -> 2/3
    metric.update(PREDS, target)
    assert metric.compute()["top-1"].item() == pytest.approx(2 / 3)


def test_reset_and_bad_target():
    metric = build_topk_accuracy_metric(AccuracyAveraging.MEAN_ACCURACY, num_classes=3, ks=(1,))
    metric.update(PREDS, TARGET)
    metric.reset()
    metric.update(PREDS[:1], TARGET[:1])
    assert metric.compute()["top-1"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="targets must lie"):
        metric.update(PREDS[:1], torch.tensor([3]))
    with pytest.raises(ValueError, match="preds must be"):
        metric.update(PREDS[:, :2], TARGET)
