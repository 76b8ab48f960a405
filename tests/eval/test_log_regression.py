import pytest
import torch
from torch import nn

from dinov2.eval.log_regression import (
    C_POWER_RANGE,
    DEFAULT_MAX_ITER,
    LogRegModule,
    eval_log_regression,
    get_args_parser,
    sweep_C_values,
)
from dinov2.eval.metrics import MetricType
from tests.eval.points import PointDataset


def _problem(n: int = 150, dim: int = 5, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    w = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    y = (x @ w.T + 0.7 * torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(dim=1)
    return x, y


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
def test_fit_satisfies_optimality_conditions(C):
    # At the optimum of C * sum_i CE_i + ||W||^2 / 2 the gradient vanishes:
    #   W = -C * sum_i (p_i - onehot(y_i)) x_i^T   and   sum_i (p_i - onehot(y_i)) = 0 (unpenalised bias).
    x, y = _problem()
    model = LogRegModule(C).fit(x, y)
    residual = model.predict_proba(x) - nn.functional.one_hot(y, 3).double()  # [N, K]
    # Tolerances are in units of the summed loss over 150 samples (about 1e-6 per sample).
    torch.testing.assert_close(model.weight, -C * residual.T @ x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(residual.sum(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_fit_matches_scikit_learn():
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    x, y = _problem(seed=1)
    for C in (0.1, 10.0):
        ours = LogRegModule(C).fit(x, y).predict_proba(x)
        theirs = sklearn_linear.LogisticRegression(C=C, max_iter=5000, tol=1e-12).fit(x.numpy(), y.numpy())
        torch.testing.assert_close(ours, torch.from_numpy(theirs.predict_proba(x.numpy())), atol=1e-5, rtol=1e-4)


def test_stronger_regularisation_shrinks_weights_and_warm_start_agrees():
    x, y = _problem()
    small, large = LogRegModule(1e-3).fit(x, y), LogRegModule(1e2).fit(x, y)
    assert small.weight.norm() < 0.1 * large.weight.norm()
    warm = LogRegModule(1e2).fit(x, y, init=small)
    torch.testing.assert_close(warm.predict_proba(x), large.predict_proba(x), atol=1e-5, rtol=1e-4)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="C=0"):
        LogRegModule(0.0)
    with pytest.raises(RuntimeError, match="fit"):
        LogRegModule(1.0).predict_proba(torch.zeros(1, 2))


def _clusters(n_per_class: int, seed: int):
    centers = torch.randn(4, 6, generator=torch.Generator().manual_seed(3)) * 2
    labels = torch.arange(4).repeat_interleave(n_per_class)
    points = centers[labels] + 0.5 * torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(seed))
    return points, labels


def test_eval_log_regression_on_separable_clusters():
    train, val = _clusters(25, seed=0), _clusters(10, seed=1)
    results = eval_log_regression(
        model=nn.Identity(),
        train_dataset=PointDataset(*train),
        val_dataset=PointDataset(*val),
        finetune_dataset=None,
        metric_type=MetricType.MEAN_ACCURACY,
        batch_size=16,
        num_workers=0,
        c_power_range=torch.linspace(-4, 2, 4),
        max_train_iters=200,
    )
    assert results["top-1"] > 95.0 and results["top-5"] == pytest.approx(100.0)
    assert any(results["best_C"] == pytest.approx(10**p, rel=1e-5) for p in (-4, -2, 0, 2))


def test_sweep_picks_the_c_with_the_best_selection_accuracy():
    # Labels depend on a weak feature; heavy regularisation (tiny C) cannot use it and scores lower.
    x, y = _problem(n=200, seed=2)
    select_x, select_y = _problem(n=200, seed=2)
    loader = [(select_x, select_y)]
    sweep = sweep_C_values(
        train_features=x,
        train_labels=y,
        test_data_loader=loader,
        metric_type=MetricType.PER_CLASS_ACCURACY,
        num_classes=3,
        c_power_range=torch.tensor([-6.0, 0.0]),
        max_train_iters=100,
    )
    assert len(sweep["scores"]) == 2
    assert sweep["best_C"] == pytest.approx(1.0)
    assert sweep["scores"][1] > sweep["scores"][0]


def test_cli_defaults_match_reference():
    args = get_args_parser(add_help=False).parse_args([])
    assert args.train_features_device == "cpu" and args.train_dtype == "float64"
    assert args.max_train_iters == DEFAULT_MAX_ITER == 1000
    assert args.metric_type == MetricType.MEAN_ACCURACY and args.finetune_on_val is False
    assert args.finetune_dataset_str is None
    assert len(C_POWER_RANGE) == 45 and C_POWER_RANGE[0] == -6 and C_POWER_RANGE[-1] == 5
