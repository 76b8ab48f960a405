import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dinov2.eval import linear
from dinov2.eval.linear import (
    DEFAULT_LEARNING_RATES,
    LinearClassifier,
    _pad_and_collate,
    create_linear_input,
    eval_linear,
    get_args_parser,
    setup_linear_classifiers,
)
from dinov2.eval.metrics import MetricType
from dinov2.eval.utils import ModelWithIntermediateLayers, make_inference_data_loader


class TinyBackbone(nn.Module):
    """Stands in for the ViT: block i gives CLS = x * (i + 1) and two patch tokens (x and x / 2)."""

    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        self.dummy = nn.Parameter(torch.zeros(()))

    def get_intermediate_layers(self, x, n, return_class_token):
        outputs = []
        for i in range(self.depth - n, self.depth):
            patches = torch.stack([x, x / 2], dim=1) + self.dummy  # [B, 2, D]
            outputs.append((patches, x * (i + 1) + self.dummy))
        return tuple(outputs)


def _clusters(n_per_class: int, num_classes: int, dim: int, seed: int):
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(7)) * 2
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    points = centers[labels] + 0.3 * torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return points, labels


def test_create_linear_input_concatenates_last_blocks_and_avgpool():
    x = torch.arange(6.0).view(2, 3)
    tokens = TinyBackbone(depth=4).get_intermediate_layers(x, 4, True)
    one = create_linear_input(tokens, use_n_blocks=1, use_avgpool=False)
    torch.testing.assert_close(one, x * 4)
    four_avg = create_linear_input(tokens, use_n_blocks=4, use_avgpool=True)
    assert four_avg.shape == (2, 15)
    torch.testing.assert_close(four_avg[:, :3], x * 1)  # block order: the oldest of the last 4 first
    torch.testing.assert_close(four_avg[:, 9:12], x * 4)
    torch.testing.assert_close(four_avg[:, 12:], x * 0.75)  # mean of x and x / 2


def test_classifier_grid_names_dims_and_lrs():
    x = torch.randn(1, 5)
    sample = TinyBackbone().get_intermediate_layers(x, 4, True)
    classifiers, groups = setup_linear_classifiers(sample, [1, 4], DEFAULT_LEARNING_RATES, 128, num_classes=7)
    assert len(classifiers) == 52 and len(groups) == 52
    heads = classifiers.classifiers_dict
    assert heads["classifier_4_blocks_avgpool_True_lr_0_00500"].linear.in_features == 25
    assert heads["classifier_1_blocks_avgpool_False_lr_0_05000"].linear.in_features == 5
    # lr scaled by batch / 256 (one process): 0.1 * 128 / 256 = 0.05
    assert max(group["lr"] for group in groups) == pytest.approx(0.05)
    # 1e-5 and 2e-5 scale to 5e-6 and 1e-5, which share 5 decimals; both heads must survive.
    assert len(set(heads.keys())) == 52


def test_linear_classifier_init():
    head = LinearClassifier(out_dim=300, use_n_blocks=1, use_avgpool=False, num_classes=200)
    assert torch.all(head.linear.bias == 0)
    assert head.linear.weight.std().item() == pytest.approx(0.01, rel=0.05)


def _run(tmp_path, max_iter, resume=True):
    torch.manual_seed(0)
    train_x, train_y = _clusters(30, 3, dim=8, seed=0)
    val_x, val_y = _clusters(10, 3, dim=8, seed=1)
    feature_model = ModelWithIntermediateLayers(TinyBackbone(), n_last_blocks=4)
    sample = feature_model(train_x[:1])
    classifiers, groups = setup_linear_classifiers(sample, [1, 4], [0.0, 0.5], batch_size=32, num_classes=3)
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_iter, eta_min=0)
    train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=32, shuffle=True, drop_last=True)
    val_loader = make_inference_data_loader(TensorDataset(val_x, val_y), batch_size=16, num_workers=0)
    return eval_linear(
        feature_model=feature_model,
        linear_classifiers=classifiers,
        train_data_loader=train_loader,
        val_data_loader=val_loader,
        metrics_file_path=str(tmp_path / "results_eval_linear.json"),
        optimizer=optimizer,
        scheduler=scheduler,
        output_dir=str(tmp_path),
        max_iter=max_iter,
        checkpoint_period=1000,
        running_checkpoint_period=10,
        eval_period=25,
        metric_type=MetricType.MEAN_ACCURACY,
        training_num_classes=3,
        resume=resume,
    )


def test_linear_probe_learns_separable_problem_and_resumes(tmp_path):
    results, _, classifiers, iteration = _run(tmp_path, max_iter=60)
    assert iteration == 60
    best = results["best_classifier"]
    assert best["accuracy"] > 0.95
    assert "lr_0_06250" in best["name"]  # 0.5 * 32 / 256; the lr-0 heads stay at their random init

    lines = (tmp_path / "results_eval_linear.json").read_text().splitlines()
    assert lines[0] == "iter: 24" and lines[-3] == "iter: 60" and lines[-1] == ""
    assert json.loads(lines[-2])["best_classifier"]["name"] == best["name"]
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "running_checkpoint_linear_eval.pth").is_file()

    # Resuming a finished run trains nothing and reloads the same heads.
    weights = {k: v.clone() for k, v in classifiers.state_dict().items()}
    _, _, resumed, iteration = _run(tmp_path, max_iter=60)
    assert iteration == 60
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, weights[key])


def test_pad_and_collate_pads_with_minus_one():
    batch = [(torch.zeros(3, 2, 2), [4, 5]), (torch.ones(3, 2, 2), 7)]
    images, targets = _pad_and_collate(batch)
    assert images.shape == (2, 3, 2, 2)
    assert targets.tolist() == [[4, 5], [7, -1]]


def test_cli_defaults_match_reference():
    args = get_args_parser(add_help=False).parse_args([])
    assert args.epochs == 10 and args.batch_size == 128 and args.num_workers == 8
    assert args.epoch_length == 1250 and args.save_checkpoint_frequency == 20 and args.eval_period_iterations == 1250
    assert args.learning_rates == DEFAULT_LEARNING_RATES and len(args.learning_rates) == 13
    assert args.val_metric_type == MetricType.MEAN_ACCURACY and args.test_class_mapping_fpaths == [None]
    assert args.no_resume is False and args.test_dataset_strs is None
    args = get_args_parser().parse_args(["--val-metric-type", "mean_per_class_accuracy", "--no-resume"])
    assert args.val_metric_type == MetricType.MEAN_PER_CLASS_ACCURACY and args.no_resume


def test_public_names_exist():
    for name in linear.__all__:
        assert hasattr(linear, name), name


def test_resumed_train_loader_continues_the_global_stream(monkeypatch):
    """On rank 0 of 2, a loader resumed after 3 iterations yields what an uninterrupted one yields 4th."""
    from dinov2 import distributed
    from dinov2.data import samplers

    monkeypatch.setattr(distributed, "get_global_size", lambda: 2)
    monkeypatch.setattr(samplers, "get_global_size", lambda: 2)
    monkeypatch.setattr(samplers, "get_global_rank", lambda: 0)
    dataset = TensorDataset(torch.arange(40), torch.zeros(40, dtype=torch.long))

    def batches(start_iter, count):
        loader = linear.make_train_data_loader(dataset, batch_size=4, num_workers=0, start_iter=start_iter)
        stream = iter(loader)
        return [next(stream)[0].tolist() for _ in range(count)]

    uninterrupted = batches(start_iter=0, count=5)
    assert batches(start_iter=3, count=2) == uninterrupted[3:5]


def test_val_labels_follow_the_training_class_names(tmp_path):
    from PIL import Image

    from dinov2.data import make_dataset
    from dinov2.errors import DataError

    for split, classes in (("train", ("a", "b", "c")), ("val", ("b", "c")), ("odd", ("d",))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / name / "0.png")
    train = make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'train'}")
    loader = linear.make_eval_data_loader(
        f"ImageFolder:root={tmp_path / 'val'}", 2, 0, MetricType.MEAN_ACCURACY, train_dataset=train
    )
    labels = torch.cat([batch[1] for batch in loader]).tolist()
    assert labels == [1, 2]  # val's b and c are train's 1 and 2, not 0 and 1
    with pytest.raises(DataError, match="1 class\\(es\\) the training set lacks: d"):
        linear.make_eval_data_loader(
            f"ImageFolder:root={tmp_path / 'odd'}", 2, 0, MetricType.MEAN_ACCURACY, train_dataset=train
        )


def test_a_missing_class_mapping_fails_before_training(tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / name / "0.png")

    def training_started(**_):
        raise AssertionError("training started before the class mappings were read")

    monkeypatch.setattr(linear, "_build_probe", lambda *args: (None, None, None, None))
    monkeypatch.setattr(linear, "_restore", lambda *args: 0)
    monkeypatch.setattr(linear, "eval_linear", training_started)
    with pytest.raises(FileNotFoundError, match="no_such_mapping"):
        linear.run_eval_linear(
            model=None,
            output_dir=str(tmp_path / "out"),
            train_dataset_str=f"ImageFolder:root={tmp_path / 'train'}",
            val_dataset_str=f"ImageFolder:root={tmp_path / 'val'}",
            batch_size=2,
            epochs=1,
            epoch_length=1,
            num_workers=0,
            save_checkpoint_frequency=1,
            eval_period_iterations=1,
            learning_rates=[0.1],
            autocast_dtype=torch.float32,
            test_class_mapping_fpaths=[str(tmp_path / "no_such_mapping.npy")],
        )
