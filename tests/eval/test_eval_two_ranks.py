"""k-NN and feature extraction on 2 gloo ranks give what one process gives on the whole data."""

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.distributed.spawn import run_ranks
from tests.eval.points import PointDataset


def _data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=g)
    train_y = torch.arange(3).repeat(15)  # 45 samples: chunks of 23 and 22 on 2 ranks
    val_y = torch.arange(3).repeat(5)[:13]  # 13 samples: the sampler pads rank 1 with a repeat
    train_x = centers[train_y] + 0.8 * torch.randn(len(train_y), 6, generator=g)
    val_x = centers[val_y] + 0.8 * torch.randn(len(val_y), 6, generator=g)
    return train_x, train_y, val_x, val_y


def _run(train_x, train_y, val_x, val_y):
    from dinov2.eval.knn import KnnModule, eval_knn
    from dinov2.eval.metrics import AccuracyAveraging
    from dinov2.eval.utils import extract_features

    features, labels = extract_features(nn.Identity(), PointDataset(val_x, val_y), batch_size=4, num_workers=0)
    train_n = nn.functional.normalize(train_x, dim=1)
    knn = KnnModule(train_n, train_y, nb_knn=[1, 5, 30], T=0.07, num_classes=3)
    results = eval_knn(
        nn.Identity(),
        PointDataset(train_x, train_y),
        PointDataset(val_x, val_y),
        accuracy_averaging=AccuracyAveraging.MEAN_ACCURACY,
        nb_knn=[1, 5, 30],
        temperature=0.07,
        batch_size=4,
        num_workers=0,
        gather_on_cpu=True,
    )
    return {"features": features, "labels": labels, "knn": knn, "results": results}


def _worker(rank: int, out_dir: str) -> None:
    train_x, train_y, val_x, val_y = _data()
    out = _run(train_x, train_y, val_x, val_y)
    # Each rank scores its own half of the queries against the training set sharded over both ranks.
    queries = nn.functional.normalize(val_x, dim=1)[rank * 7 : rank * 7 + 6]
    scores = out["knn"](queries)
    torch.save(
        {
            "features": out["features"],
            "labels": out["labels"],
            "scores": scores,
            "results": {k: {n: v.item() for n, v in r.items()} for k, r in out["results"].items()},
        },
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    run_ranks(_worker, 2, str(tmp_path))
    train_x, train_y, val_x, val_y = _data()
    single = _run(train_x, train_y, val_x, val_y)
    queries = nn.functional.normalize(val_x, dim=1)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["features"], val_x)  # full set, dataset order, on every rank
        assert got["labels"].tolist() == val_y.tolist()
        expected = single["knn"](queries[rank * 7 : rank * 7 + 6])
        for k in (1, 5, 30):
            torch.testing.assert_close(got["scores"][k], expected[k])
        for key, result in single["results"].items():
            for name, value in result.items():
                assert got["results"][key][name] == pytest.approx(value.item())
