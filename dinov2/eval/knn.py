"""k-NN classification of frozen features (cosine similarity, temperature-weighted voting), as in DINO/DINOv2.

Run ``python -m dinov2.eval.knn --config-file CFG --pretrained-weights CKPT --output-dir DIR --train-dataset ...
--val-dataset ...``. Works in one process on CPU or GPU and under torchrun/SLURM, where the training features
are sharded over ranks and each query batch is matched against every shard.
"""

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from dinov2 import distributed
from dinov2.errors import ConfigError
from dinov2.eval.metrics import AccuracyAveraging, build_topk_accuracy_metric
from dinov2.eval.setup import eval_transform_from_args, run_eval
from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.eval.utils import (
    ModelWithNormalize,
    align_to_train_classes,
    all_gather_and_flatten,
    append_results,
    autocast_context,
    evaluate,
    extract_features,
    get_model_device,
    make_inference_data_loader,
)
from dinov2.utils.cli import run_cli

logger = logging.getLogger("dinov2")

__all__ = [
    "get_args_parser",
    "KnnModule",
    "DictKeysModule",
    "ModuleDictWithForward",
    "create_class_indices_mapping",
    "filter_train",
    "create_module_dict",
    "eval_knn",
    "eval_knn_with_model",
    "main",
]


def get_args_parser(
    description: str | None = None,
    parents: list[argparse.ArgumentParser] | None = None,
    add_help: bool = True,
) -> argparse.ArgumentParser:
    setup_args_parser = get_setup_args_parser(parents=parents or [], add_help=False)
    parser = argparse.ArgumentParser(description=description, parents=[setup_args_parser], add_help=add_help)
    parser.add_argument("--train-dataset", dest="train_dataset_str", type=str, help="Training dataset")
    parser.add_argument("--val-dataset", dest="val_dataset_str", type=str, help="Validation dataset")
    parser.add_argument("--nb_knn", nargs="+", type=int, help="Number of nearest neighbours to vote with")
    parser.add_argument("--temperature", type=float, help="Temperature of the softmax over neighbour similarities")
    parser.add_argument(
        "--gather-on-cpu", action="store_true", help="Keep the gathered features in host memory (large sets)"
    )
    parser.add_argument("--batch-size", type=int, help="Batch size per rank")
    parser.add_argument(
        "--n-per-class-list", nargs="+", type=int, help="Training samples per class (few-shot); -1 = all"
    )
    parser.add_argument("--n-tries", type=int, help="Random draws of the few-shot training subsets")
    # Loader workers and the eval transform sizes, for small images and small CPUs.
    parser.add_argument(
        "--num-workers", type=int, help="Data loader workers (default: 5 as in the reference, at most the CPU count)"
    )
    parser.add_argument("--resize-size", type=int, help="Eval transform: shorter side resized to this")
    parser.add_argument("--crop-size", type=int, help="Eval transform: centre crop size (model input)")
    parser.add_argument(
        "--center-features",
        action="store_true",
        help="Subtract the training features' mean before the cosine similarity (helps raw pixels, whose shared "
        "background dominates the cosine otherwise)",
    )
    parser.set_defaults(
        train_dataset_str="ImageNet:split=TRAIN",
        val_dataset_str="ImageNet:split=VAL",
        nb_knn=[10, 20, 100, 200],
        temperature=0.07,
        batch_size=256,
        n_per_class_list=[-1],
        n_tries=1,
        num_workers=min(5, os.cpu_count() or 1),
        resize_size=256,
        crop_size=224,
    )
    return parser


class KnnModule(nn.Module):
    """Scores ``{k: [B, C]}`` of a query batch from its ``max(nb_knn)`` most cosine-similar training samples.

    Each rank holds the ``rank``-th chunk of the training features. A query batch is all-gathered, matched against
    every chunk (top-k per chunk), and the per-chunk candidates are gathered and merged by a second top-k. Votes
    are ``softmax(sim / T)`` over the ``max(nb_knn)`` neighbours, summed per class over the first ``k``; the shared
    softmax normaliser leaves the per-query ranking equal to DINO's ``sum exp(sim / T)`` voting.
    Features are expected L2-normalised (``ModelWithNormalize``).
    """

    def __init__(
        self,
        train_features: torch.Tensor,
        train_labels: torch.Tensor,
        nb_knn: Sequence[int],
        T: float,
        device: torch.device | None = None,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if not nb_knn or min(nb_knn) < 1:
            raise ConfigError(f"nb_knn={list(nb_knn)} must be a non-empty list of positive integers")
        if T <= 0:
            raise ConfigError(f"temperature T={T} must be > 0")
        self.global_rank = distributed.get_global_rank()
        self.global_size = distributed.get_global_size()
        device = train_features.device if device is None else device
        self.device = device
        chunk_features = train_features.chunk(self.global_size)[self.global_rank]  # [N_r, D]
        chunk_labels = train_labels.chunk(self.global_size)[self.global_rank]  # [N_r]
        self.train_features_rank_T = chunk_features.T.to(device)  # [D, N_r]
        self.candidates = chunk_labels.view(-1).long().to(device)  # [N_r]
        self.nb_knn = list(nb_knn)
        self.max_k = max(self.nb_knn)
        self.T = T
        self.num_classes = num_classes

    def _topk_in_chunk(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``max_k`` similarities and labels of ``queries`` in this rank's chunk, padded with -inf if short."""
        sims = queries.to(self.train_features_rank_T.dtype) @ self.train_features_rank_T  # [Q, N_r]
        k = min(self.max_k, sims.shape[1])
        topk_sims, indices = sims.topk(k, dim=1, largest=True, sorted=True)  # [Q, k]
        labels = self.candidates[indices]  # [Q, k]
        if k < self.max_k:
            pad = self.max_k - k
            topk_sims = F.pad(topk_sims, (0, pad), value=float("-inf"))  # [Q, max_k]
            labels = F.pad(labels, (0, pad), value=0)  # [Q, max_k]
        return topk_sims, labels

    def compute_neighbors(self, features_rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarities and labels ``[B, max_k]`` of the nearest training samples over all ranks' chunks."""
        batch_size = features_rank.shape[0]
        queries = all_gather_and_flatten(features_rank)  # [W*B, D]
        topk_sims, labels = self._topk_in_chunk(queries)  # [W*B, max_k]
        # Every rank scored every query against its chunk; keep this rank's queries from each chunk's answer.
        all_sims = all_gather_and_flatten(topk_sims[None])  # [W, W*B, max_k]
        all_labels = all_gather_and_flatten(labels[None])  # [W, W*B, max_k]
        rows = slice(self.global_rank * batch_size, (self.global_rank + 1) * batch_size)
        cand_sims = all_sims[:, rows].permute(1, 0, 2).reshape(batch_size, -1)  # [B, W*max_k]
        cand_labels = all_labels[:, rows].permute(1, 0, 2).reshape(batch_size, -1)  # [B, W*max_k]
        topk_sims, indices = cand_sims.topk(self.max_k, dim=1, largest=True, sorted=True)  # [B, max_k]
        return topk_sims, cand_labels.gather(1, indices)

    def forward(self, features_rank: torch.Tensor) -> dict[int, torch.Tensor]:
        if features_rank.ndim != 2 or features_rank.shape[1] != self.train_features_rank_T.shape[0]:
            raise ValueError(
                f"query features of shape {tuple(features_rank.shape)} do not match the training features' "
                f"dimension {self.train_features_rank_T.shape[0]}"
            )
        topk_sims, neighbors_labels = self.compute_neighbors(features_rank)
        weights = torch.softmax(topk_sims / self.T, dim=1)  # [B, max_k]
        votes = F.one_hot(neighbors_labels, self.num_classes) * weights[:, :, None]  # [B, max_k, C]
        return {k: votes[:, :k].sum(dim=1) for k in self.nb_knn}  # k -> [B, C]


class DictKeysModule(nn.Module):
    """Postprocessor picking ``outputs[key0][key1]...`` as the predictions of one metric."""

    def __init__(self, keys: Sequence) -> None:
        super().__init__()
        self.keys = list(keys)

    def forward(self, features_dict: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        for key in self.keys:
            features_dict = features_dict[key]
        return {"preds": features_dict, "target": targets}


class ModuleDictWithForward(nn.ModuleDict):
    """ModuleDict whose forward returns ``{name: module(*args)}``."""

    def forward(self, *args, **kwargs) -> dict:
        return {name: module(*args, **kwargs) for name, module in self.items()}


class _Centered(nn.Module):
    """``model(x) - mean``."""

    def __init__(self, model: nn.Module, mean: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) - self.mean


def create_class_indices_mapping(labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{class: indices of its samples}`` for the few-shot subsets."""
    labels = labels.view(-1)
    return {int(label): (labels == label).nonzero().view(-1) for label in torch.unique(labels)}


def filter_train(mapping: dict[int, torch.Tensor], n_per_class: int, seed: int) -> torch.Tensor:
    """Random ``n_per_class`` indices of each class, drawn with ``randperm`` seeded with ``seed`` as in the official
    DINOv2 eval, so the few-shot subsets are the same."""
    generator = torch.Generator().manual_seed(seed)
    final_indices = []
    for indices in mapping.values():
        chosen = torch.randperm(len(indices), generator=generator)[:n_per_class]
        final_indices.append(indices[chosen.to(indices.device)])
    return torch.cat(final_indices)


def create_module_dict(
    *,
    module: Callable[..., KnnModule],
    n_per_class_list: Sequence[int],
    n_tries: int,
    nb_knn: Sequence[int],
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
) -> ModuleDictWithForward:
    """``{"full": {"1": knn}, "<n> per class": {"<try>": knn}}`` over the requested training subsets."""
    modules = {}
    mapping = create_class_indices_mapping(train_labels)
    for npc in n_per_class_list:
        if npc < 0:  # the full training set
            modules["full"] = ModuleDictWithForward(
                {"1": module(train_features=train_features, train_labels=train_labels, nb_knn=nb_knn)}
            )
            continue
        k_list = sorted(k for k in set(nb_knn) | {npc} if k <= npc)
        tries = {}
        for t in range(n_tries):
            final_indices = filter_train(mapping, npc, seed=t)
            tries[f"{t}"] = module(
                train_features=train_features[final_indices],
                train_labels=train_labels[final_indices],
                nb_knn=k_list,
            )
        modules[f"{npc} per class"] = ModuleDictWithForward(tries)
    return ModuleDictWithForward(modules)


def _bank(
    model: nn.Module,
    train_dataset: Dataset,
    batch_size: int,
    num_workers: int,
    gather_on_cpu: bool,
    center_features: bool,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The normalised training features and labels, and the model that maps queries the same way (mean-centred
    first with ``center_features``)."""
    logger.info("Extracting features for train set...")
    if center_features:
        features, labels = extract_features(model, train_dataset, batch_size, num_workers, gather_on_cpu=gather_on_cpu)
        mean = features.mean(dim=0, keepdim=True)  # [1, D]
        features = F.normalize(features - mean, dim=1)
        model = ModelWithNormalize(_Centered(model, mean.to(get_model_device(model))))
    else:
        model = ModelWithNormalize(model)
        features, labels = extract_features(model, train_dataset, batch_size, num_workers, gather_on_cpu=gather_on_cpu)
    logger.info("Train features created, shape %s.", tuple(features.shape))
    return model, features, labels


def eval_knn(
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    accuracy_averaging: AccuracyAveraging,
    nb_knn: Sequence[int],
    temperature: float,
    batch_size: int,
    num_workers: int,
    gather_on_cpu: bool,
    n_per_class_list: Sequence[int] = (-1,),
    n_tries: int = 1,
    center_features: bool = False,
) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """k-NN accuracies ``{(subset, k): {"top-1", "top-5"}}`` (fractions), averaged over the few-shot tries.

    ``model`` maps images to features; they are L2-normalised here (after subtracting the training features' mean
    with ``center_features``). Call it under the autocast you want.
    """
    device = get_model_device(model)
    model, train_features, train_labels = _bank(
        model, train_dataset, batch_size, num_workers, gather_on_cpu, center_features
    )

    val_dataloader = make_inference_data_loader(
        val_dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type != "cpu"
    )
    num_classes = int(train_labels.max()) + 1

    logger.info("Start the k-NN classification.")
    partial_module = partial(KnnModule, T=temperature, device=device, num_classes=num_classes)
    knn_module_dict = create_module_dict(
        module=partial_module,
        n_per_class_list=n_per_class_list,
        n_tries=n_tries,
        nb_knn=nb_knn,
        train_features=train_features,
        train_labels=train_labels,
    )
    postprocessors, metrics = {}, {}
    for n_per_class, knn_module in knn_module_dict.items():
        for t, knn_try in knn_module.items():
            for k in knn_try.nb_knn:
                postprocessors[(n_per_class, t, k)] = DictKeysModule([n_per_class, t, k])
                metrics[(n_per_class, t, k)] = build_topk_accuracy_metric(accuracy_averaging, num_classes=num_classes)
    model_with_knn = nn.Sequential(model, knn_module_dict)

    _, results_dict = evaluate(model_with_knn, val_dataloader, postprocessors, metrics, device)
    return _average_tries(results_dict)


def _average_tries(
    results: dict[tuple[str, int, int], dict[str, torch.Tensor]],
) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """``{(subset, try, k): metrics}`` -> ``{(subset, k): metrics averaged over the few-shot tries}``."""
    grouped: dict[tuple[str, int], list[dict[str, torch.Tensor]]] = {}
    for (n_per_class, _, k), result in results.items():
        grouped.setdefault((n_per_class, k), []).append(result)
    return {
        key: {name: sum(result[name] for result in tries) / len(tries) for name in tries[0]}
        for key, tries in grouped.items()
    }


def eval_knn_with_model(
    model: nn.Module,
    output_dir: str,
    *,
    train_dataset_str: str = "ImageNet:split=TRAIN",
    val_dataset_str: str = "ImageNet:split=VAL",
    nb_knn: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    autocast_dtype: torch.dtype = torch.float,
    accuracy_averaging: AccuracyAveraging = AccuracyAveraging.MEAN_ACCURACY,
    transform: Callable | None = None,
    gather_on_cpu: bool = False,
    batch_size: int = 256,
    num_workers: int = 5,
    n_per_class_list: Sequence[int] = (-1,),
    n_tries: int = 1,
    center_features: bool = False,
) -> dict[str, float]:
    """Runs ``eval_knn`` on dataset strings with an already-built model; returns and appends the figures (in %).

    Each figure is appended to ``<output_dir>/results_eval_knn.json`` as one JSON line, e.g.
    ``{"('full', 20) Top 1": 81.2}``.
    """
    from dinov2.data import make_dataset
    from dinov2.data.transforms import make_classification_eval_transform

    if transform is None:
        transform = make_classification_eval_transform()
    train_dataset = make_dataset(dataset_str=train_dataset_str, transform=transform)
    val_dataset = align_to_train_classes(make_dataset(dataset_str=val_dataset_str, transform=transform), train_dataset)

    with autocast_context(get_model_device(model), autocast_dtype):
        results_dict_knn = eval_knn(
            model=model,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            accuracy_averaging=accuracy_averaging,
            nb_knn=nb_knn,
            temperature=temperature,
            batch_size=batch_size,
            num_workers=num_workers,
            gather_on_cpu=gather_on_cpu,
            n_per_class_list=n_per_class_list,
            n_tries=n_tries,
            center_features=center_features,
        )

    results_dict = {}
    if distributed.is_main_process():
        for key, result in results_dict_knn.items():
            top1 = float(result["top-1"]) * 100.0
            top5 = float(result["top-5"]) * 100.0
            results_dict[f"{key} Top 1"] = top1
            results_dict[f"{key} Top 5"] = top5
            logger.info("%s classifier result: Top1: %.2f Top5: %.2f", key, top1, top5)
        if output_dir:
            metrics_file_path = os.path.join(output_dir, "results_eval_knn.json")
            append_results(metrics_file_path, [{name: value} for name, value in results_dict.items()])
            logger.info("k-NN results appended to %s", metrics_file_path)
    distributed.barrier()
    return results_dict


def main(args: argparse.Namespace) -> int:
    return run_eval(
        args,
        eval_knn_with_model,
        nb_knn=args.nb_knn,
        temperature=args.temperature,
        accuracy_averaging=AccuracyAveraging.MEAN_ACCURACY,
        transform=eval_transform_from_args(args),
        gather_on_cpu=args.gather_on_cpu,
        num_workers=args.num_workers,
        n_per_class_list=args.n_per_class_list,
        n_tries=args.n_tries,
        center_features=args.center_features,
    )


if __name__ == "__main__":
    run_cli(main, get_args_parser(description="DINOv2 k-NN evaluation"))
