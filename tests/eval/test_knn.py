import math

import pytest
import torch
from torch import nn

from dinov2.eval.knn import (
    DictKeysModule,
    KnnModule,
    create_class_indices_mapping,
    eval_knn,
    filter_train,
    get_args_parser,
)
from dinov2.eval.metrics import AccuracyAveraging
from tests.eval.points import PointDataset


def _clusters(n_per_class: int, num_classes: int, dim: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    points = centers[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return points, labels


def test_temperature_weighted_vote_matches_hand_computation():
    # Unit vectors at angles 0, 60 and 90 degrees; query at 30 degrees -> cosines cos30, cos30, cos60.
    angles = torch.tensor([0.0, 60.0, 90.0]) * math.pi / 180
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]])
    T = 0.1
    knn = KnnModule(train, labels, nb_knn=[1, 3], T=T, num_classes=3)
    scores = knn(query)

    c30, c60 = math.cos(math.pi / 6), math.cos(math.pi / 3)
    e30, e60 = math.exp(c30 / T), math.exp(c60 / T)
    z = 2 * e30 + e60
    # Neighbours in order: two ties at cos30 (labels 0 and 1), then cos60 (label 1). Softmax over all 3.
    expected_k3 = torch.tensor([[e30 / z, (e30 + e60) / z, 0.0]])
    torch.testing.assert_close(scores[3], expected_k3)
    # k=1 keeps one of the tied neighbours with weight e30 / z on its class.
    assert scores[1].sum().item() == pytest.approx(e30 / z, rel=1e-5)
    assert scores[1][0, 2].item() == 0.0


def test_short_training_set_is_padded_not_an_error():
    train = nn.functional.normalize(torch.randn(3, 4), dim=1)
    knn = KnnModule(train, torch.tensor([0, 1, 2]), nb_knn=[10], T=0.07, num_classes=3)
    scores = knn(train)
    assert scores[10].shape == (3, 3)
    torch.testing.assert_close(scores[10].sum(dim=1), torch.ones(3))  # all weight on the 3 real neighbours
    assert torch.equal(scores[10].argmax(dim=1), torch.tensor([0, 1, 2]))  # each point is its own neighbour


def test_knn_on_separable_clusters_is_accurate_and_on_shuffled_labels_is_chance():
    num_classes = 5
    train_x, train_y = _clusters(40, num_classes, dim=16, noise=0.5, seed=0)
    val_x, val_y = _clusters(20, num_classes, dim=16, noise=0.5, seed=1)
    common = dict(
        accuracy_averaging=AccuracyAveraging.MEAN_ACCURACY,
        nb_knn=[5, 20],
        temperature=0.07,
        batch_size=32,
        num_workers=0,
        gather_on_cpu=False,
    )
    results = eval_knn(nn.Identity(), PointDataset(train_x, train_y), PointDataset(val_x, val_y), **common)
    assert set(results) == {("full", 5), ("full", 20)}
    assert results[("full", 20)]["top-1"].item() > 0.95

    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    results = eval_knn(nn.Identity(), PointDataset(train_x, shuffled), PointDataset(val_x, val_y), **common)
    assert results[("full", 20)]["top-1"].item() < 0.45  # chance is 0.2


def test_few_shot_subsets_and_tries():
    train_x, train_y = _clusters(10, 3, dim=8, noise=0.3, seed=0)
    val_x, val_y = _clusters(5, 3, dim=8, noise=0.3, seed=1)
    results = eval_knn(
        nn.Identity(),
        PointDataset(train_x, train_y),
        PointDataset(val_x, val_y),
        accuracy_averaging=AccuracyAveraging.MEAN_ACCURACY,
        nb_knn=[1, 5],
        temperature=0.07,
        batch_size=4,
        num_workers=0,
        gather_on_cpu=True,
        n_per_class_list=[-1, 2],
        n_tries=3,
    )
    # Few-shot k values are nb_knn plus n_per_class itself, capped at n_per_class.
    assert set(results) == {("full", 1), ("full", 5), ("2 per class", 1), ("2 per class", 2)}
    for value in results.values():
        assert 0.0 <= value["top-1"].item() <= 1.0


def test_filter_train_draws_n_per_class_reproducibly():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    mapping = create_class_indices_mapping(labels)
    assert sorted(mapping) == [0, 1, 2]
    assert mapping[0].tolist() == [0, 2, 5, 9]
    chosen = filter_train(mapping, 2, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [2, 2, 2]
    assert torch.equal(chosen, filter_train(mapping, 2, seed=0))
    # Same draw as the reference: randperm after manual_seed(seed), class by class.
    torch.manual_seed(0)
    expected = torch.cat([idx[torch.randperm(len(idx))[:2]] for idx in mapping.values()])
    assert torch.equal(chosen, expected)


def test_dict_keys_module():
    out = DictKeysModule(["full", "1", 20])({"full": {"1": {20: torch.ones(2, 3)}}}, torch.tensor([0, 1]))
    assert out["preds"].shape == (2, 3) and out["target"].tolist() == [0, 1]


def test_cli_defaults_match_reference():
    args = get_args_parser(add_help=False).parse_args([])
    assert args.nb_knn == [10, 20, 100, 200]
    assert args.temperature == 0.07
    assert args.batch_size == 256
    assert args.n_per_class_list == [-1]
    assert args.n_tries == 1
    assert args.train_dataset_str == "ImageNet:split=TRAIN" and args.val_dataset_str == "ImageNet:split=VAL"
    assert args.gather_on_cpu is False and args.opts == [] and args.output_dir == ""
    args = get_args_parser().parse_args(["--nb_knn", "3", "7", "--gather-on-cpu", "--opts", "a=1", "b=2"])
    assert args.nb_knn == [3, 7] and args.gather_on_cpu and args.opts == ["a=1", "b=2"]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="nb_knn"):
        KnnModule(torch.zeros(2, 2), torch.zeros(2), nb_knn=[], T=0.1)
    with pytest.raises(ValueError, match="temperature"):
        KnnModule(torch.zeros(2, 2), torch.zeros(2), nb_knn=[1], T=0.0)
    knn = KnnModule(torch.zeros(2, 2), torch.zeros(2), nb_knn=[1], T=0.1, num_classes=1)
    with pytest.raises(ValueError, match="dimension"):
        knn(torch.zeros(1, 3))
