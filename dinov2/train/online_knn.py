"""k-NN accuracy of the teacher during training, on a labelled bank and query set given in the config.

``evaluation.online_knn.train_dataset`` / ``val_dataset`` are dataset strings (labels are used here only); at
every teacher export the teacher backbone embeds both (center crop at the training resolution, CLS token) and
the cosine k-NN top-1 is logged to ``training_metrics.json`` as ``online_knn_top1``. Both sets can be capped to a
fixed random subset so that the measurement stays a small fraction of the training time.
"""

import contextlib
import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset, Subset

from dinov2.data import make_dataset
from dinov2.data.transforms import make_classification_eval_transform
from dinov2.errors import ConfigError
from dinov2.eval.knn import KnnModule
from dinov2.eval.utils import ModelWithNormalize, align_to_train_classes, extract_features

__all__ = ["OnlineKnn"]

logger = logging.getLogger("dinov2")


def _capped(dataset: Dataset, max_samples: int, seed: int) -> Dataset:
    """A fixed random subset of ``max_samples`` samples (the whole set when it is smaller or the cap is <= 0)."""
    if max_samples <= 0 or len(dataset) <= max_samples:
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:max_samples].sort().values
    return Subset(dataset, indices.tolist())


@dataclass
class OnlineKnn:
    """Cosine k-NN top-1 (%) of a backbone's CLS features: ``bank`` labels vote for the ``queries``."""

    bank: Dataset
    queries: Dataset
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256
    num_workers: int = 0

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "OnlineKnn | None":
        """The online k-NN the config asks for, or None when ``evaluation.online_knn.train_dataset`` is empty."""
        knn_cfg = cfg.evaluation.online_knn
        if not knn_cfg.train_dataset:
            return None
        if not knn_cfg.val_dataset:
            raise ConfigError(
                "evaluation.online_knn.train_dataset is set but evaluation.online_knn.val_dataset is empty: give "
                "both (a labelled bank and labelled queries), or neither"
            )
        size = cfg.crops.global_crops_size
        transform = make_classification_eval_transform(resize_size=size, crop_size=size)
        bank = make_dataset(dataset_str=knn_cfg.train_dataset, transform=transform)
        queries = make_dataset(dataset_str=knn_cfg.val_dataset, transform=transform)
        queries = align_to_train_classes(queries, bank, "evaluation.online_knn.val_dataset")
        return cls(
            bank=_capped(bank, knn_cfg.max_train_samples, cfg.train.seed),
            queries=_capped(queries, knn_cfg.max_val_samples, cfg.train.seed + 1),
            k=knn_cfg.k,
            temperature=knn_cfg.temperature,
            num_workers=min(cfg.train.num_workers, 2),
        )

    @torch.no_grad()
    def __call__(self, backbone: nn.Module, autocast: contextlib.AbstractContextManager | None = None) -> float:
        """Top-1 (%) of ``backbone`` (every rank must call it: features and neighbours are gathered)."""
        model = ModelWithNormalize(backbone)
        with autocast or contextlib.nullcontext():
            args = (self.batch_size, self.num_workers)
            bank_features, bank_labels = extract_features(model, self.bank, *args, console=False)
            query_features, query_labels = extract_features(model, self.queries, *args, console=False)
        num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
        knn = KnnModule(bank_features, bank_labels, nb_knn=[self.k], T=self.temperature, num_classes=num_classes)
        correct = 0
        for start in range(0, len(query_features), self.batch_size):
            scores = knn(query_features[start : start + self.batch_size])[self.k]  # [B, C]
            labels = query_labels[start : start + self.batch_size]
            correct += int((scores.argmax(dim=1) == labels).sum())
        return 100.0 * correct / len(query_features)
