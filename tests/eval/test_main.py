"""The eval entry points end to end: command line -> setup -> teacher (random init) -> eval -> results file."""

import json

import numpy as np
import pytest
from PIL import Image

import dinov2.logging
from dinov2.eval import knn, linear, log_regression

_EVAL_FLAGS = {
    knn: "--nb_knn 1 3 --num-workers 0".split(),
    log_regression: "--max-train-iters 5".split(),
    linear: "--epochs 1 --epoch-length 2 --eval-period-iterations 2 --learning-rates 0.1 --num-workers 0".split(),
}


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of 6 small images each, dark and bright, in an ImageFolder layout."""
    rng = np.random.default_rng(0)
    for label, base in enumerate((40, 200)):
        (tmp_path / "images" / f"class{label}").mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(base + rng.integers(-30, 30, size=(20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"class{label}" / f"{i}.png")
    return f"ImageFolder:root={tmp_path / 'images'}:extra={tmp_path / 'cache'}"


@pytest.mark.slow
@pytest.mark.parametrize("module", [knn, log_regression, linear], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_main_writes_results_for_a_teacher_on_an_image_folder(module, image_folder, tmp_path, monkeypatch):
    # The run's logging setup would redirect the package logger for the rest of the test session.
    monkeypatch.setattr(dinov2.logging, "setup_logging", lambda **kwargs: None)
    argv = [
        "--pretrained-weights", "random", "--output-dir", str(tmp_path / "out"),
        "--opts", "student.arch=vit_tiny", "student.patch_size=14", "crops.global_crops_size=28",
        "--train-dataset", image_folder, "--val-dataset", image_folder, "--resize-size", "28", "--crop-size", "28",
        "--batch-size", "4", *_EVAL_FLAGS[module],
    ]  # fmt: skip
    assert module.main(module.get_args_parser().parse_args(argv)) == 0

    assert (tmp_path / "out" / "config.yaml").is_file()
    results_file = {knn: "results_eval_knn.json", log_regression: "results_eval_log_regression.json"}
    lines = (tmp_path / "out" / results_file.get(module, "results_eval_linear.json")).read_text().splitlines()
    if module is knn:
        assert [next(iter(json.loads(line))) for line in lines[:2]] == ["('full', 1) Top 1", "('full', 1) Top 5"]
    elif module is log_regression:
        assert set(json.loads(lines[0])) == {"top-1", "top-5", "best_C"}
    else:
        assert lines[0] == "iter: 2" and json.loads(lines[1])["best_classifier"]["name"].startswith("classifier_")


def _knn_top1(path, k: int = 3) -> float:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return next(r[f"('full', {k}) Top 1"] for r in records if f"('full', {k}) Top 1" in r)


@pytest.mark.slow
def test_raw_pixel_baseline_through_both_clis(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(dinov2.logging, "setup_logging", lambda **kwargs: None)
    common = [
        "--pretrained-weights", "raw-pixels", "--train-dataset", image_folder, "--val-dataset", image_folder,
        "--resize-size", "20", "--crop-size", "20", "--batch-size", "4",
    ]  # fmt: skip
    for center in ([], ["--center-features"]):
        out = tmp_path / f"knn{len(center)}"
        argv = [*common, "--output-dir", str(out), "--nb_knn", "3", "--num-workers", "0", *center]
        assert knn.main(knn.get_args_parser().parse_args(argv)) == 0
        assert _knn_top1(out / "results_eval_knn.json") == pytest.approx(100.0)  # dark vs bright pixels
    flags = ["--c-power-range", "-1", "1", "3", "--max-train-iters", "20", "--num-workers", "1"]
    argv = [*common, "--output-dir", str(tmp_path / "logreg"), *flags]
    assert log_regression.main(log_regression.get_args_parser().parse_args(argv)) == 0
    result = json.loads((tmp_path / "logreg" / "results_eval_log_regression.json").read_text().splitlines()[0])
    assert result["top-1"] == pytest.approx(100.0)
    assert min(abs(result["best_C"] - c) for c in (0.1, 1.0, 10.0)) < 1e-6  # one of the 3 swept values


def test_centering_subtracts_the_training_mean():
    import torch

    # Two classes that differ by a small offset on top of a large shared component: cosine similarity sees the
    # shared component only, unless the mean is subtracted.
    base = torch.tensor([100.0, 0.0])
    train = torch.stack([base + torch.tensor([0.0, d]) for d in (1.0, 1.1, -1.0, -1.1)])
    labels = torch.tensor([0, 0, 1, 1])
    dataset = torch.utils.data.TensorDataset(train, labels)
    kwargs = dict(
        accuracy_averaging=knn.AccuracyAveraging.MEAN_ACCURACY, nb_knn=[1], temperature=0.07, batch_size=4,
        num_workers=0, gather_on_cpu=False,
    )  # fmt: skip
    model = torch.nn.Identity()
    centered = knn.eval_knn(model, dataset, dataset, center_features=True, **kwargs)
    assert float(centered[("full", 1)]["top-1"]) == pytest.approx(1.0)


def test_log_regression_rejects_a_bad_c_range():
    with pytest.raises(ValueError, match="COUNT"):
        log_regression._c_power_range(1.0, 0.0, 3)
    assert log_regression._c_power_range(-1, 1, 3).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.slow
def test_val_labels_follow_the_training_class_names(tmp_path, monkeypatch):
    monkeypatch.setattr(dinov2.logging, "setup_logging", lambda **kwargs: None)
    rng = np.random.default_rng(0)
    for split, classes in (("train", ("a", "b", "c")), ("val", ("b", "c")), ("odd", ("c", "d"))):
        for name in classes:
            base = {"a": 20, "b": 120, "c": 230, "d": 60}[name]
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = np.clip(base + rng.integers(-10, 10, size=(16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    common = [
        "--pretrained-weights", "raw-pixels", "--train-dataset", f"ImageFolder:root={tmp_path / 'train'}",
        "--resize-size", "16", "--crop-size", "16", "--batch-size", "4", "--nb_knn", "1", "--num-workers", "0",
    ]  # fmt: skip
    out = tmp_path / "knn"
    argv = [*common, "--val-dataset", f"ImageFolder:root={tmp_path / 'val'}", "--output-dir", str(out)]
    assert knn.main(knn.get_args_parser().parse_args(argv)) == 0
    assert _knn_top1(out / "results_eval_knn.json", 1) == pytest.approx(100.0)  # val's "b" is train's "b"
    argv = [*common, "--val-dataset", f"ImageFolder:root={tmp_path / 'odd'}", "--output-dir", str(tmp_path / "k2")]
    with pytest.raises(ValueError, match="1 class\\(es\\) the training set lacks: d"):
        knn.main(knn.get_args_parser().parse_args(argv))
    # logistic regression matches the classes the same way
    out = tmp_path / "logreg"
    argv = [
        *common[: common.index("--nb_knn")], "--val-dataset", f"ImageFolder:root={tmp_path / 'val'}",
        "--output-dir", str(out), "--c-power-range", "0", "0", "1", "--max-train-iters", "20", "--num-workers", "0",
    ]  # fmt: skip
    assert log_regression.main(log_regression.get_args_parser().parse_args(argv)) == 0
    result = json.loads((out / "results_eval_log_regression.json").read_text().splitlines()[0])
    assert result["top-1"] == pytest.approx(100.0)  # val's b and c scored as train's b and c
