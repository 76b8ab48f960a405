"""Linear probing of a frozen backbone: a grid of linear heads trained at once, the best one picked on validation.

The grid is kept as in the official DINOv2 evaluation so that the results compare with the published ones: CLS
tokens of the last 1 or 4 blocks, with or without the average patch token of the last block, times 13 learning
rates (52 heads), trained with SGD and a cosine schedule on one shared feature pass.

    python -m dinov2.eval.linear --config-file CFG --pretrained-weights CKPT --output-dir DIR \\
        --train-dataset ImageFolder:root=... --val-dataset ImageFolder:root=...
"""

import argparse
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from fvcore.common import checkpoint as fvcore_checkpoint
from fvcore.common.checkpoint import PeriodicCheckpointer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from dinov2 import distributed
from dinov2.errors import ConfigError
from dinov2.eval.metrics import MetricType, build_metric
from dinov2.eval.setup import eval_transform_from_args, run_eval
from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.eval.utils import (
    ModelWithIntermediateLayers,
    align_to_train_classes,
    append_results,
    autocast_context,
    evaluate,
    get_model_device,
    make_inference_data_loader,
)
from dinov2.utils.cli import run_cli
from dinov2.utils.signals import Stopped, StopRequest, signal_name

logger = logging.getLogger("dinov2")


class Checkpointer(fvcore_checkpoint.Checkpointer):
    """fvcore's checkpointer (the heads, SGD and scheduler states in one file per period, ``last_checkpoint``
    pointing at the newest: all this small eval needs), reading files weights-only like every other load."""

    def _load_file(self, f: str) -> dict:
        from dinov2.models.weights import load_checkpoint_file

        return load_checkpoint_file(f)


__all__ = [
    "DEFAULT_LEARNING_RATES",
    "get_args_parser",
    "has_ddp_wrapper",
    "remove_ddp_wrapper",
    "create_linear_input",
    "LinearClassifier",
    "AllClassifiers",
    "LinearPostprocessor",
    "scale_lr",
    "setup_linear_classifiers",
    "evaluate_linear_classifiers",
    "eval_linear",
    "make_eval_data_loader",
    "make_train_data_loader",
    "test_on_datasets",
    "run_eval_linear",
    "main",
]

DEFAULT_LEARNING_RATES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1]
_N_LAST_BLOCKS_LIST = (1, 4)


def get_args_parser(
    description: str | None = None,
    parents: list[argparse.ArgumentParser] | None = None,
    add_help: bool = True,
) -> argparse.ArgumentParser:
    setup_args_parser = get_setup_args_parser(parents=parents or [], add_help=False)
    parser = argparse.ArgumentParser(description=description, parents=[setup_args_parser], add_help=add_help)
    parser.add_argument("--train-dataset", dest="train_dataset_str", type=str, help="Training dataset")
    parser.add_argument("--val-dataset", dest="val_dataset_str", type=str, help="Validation dataset")
    parser.add_argument("--test-datasets", dest="test_dataset_strs", type=str, nargs="+", help="Test datasets")
    parser.add_argument("--epochs", type=int, help="Number of training epochs")
    parser.add_argument("--batch-size", type=int, help="Batch size (per rank)")
    parser.add_argument("--num-workers", type=int, help="Number of data loader workers")
    parser.add_argument("--epoch-length", type=int, help="Iterations per epoch")
    parser.add_argument("--save-checkpoint-frequency", type=int, help="Epochs between two checkpoints")
    parser.add_argument("--eval-period-iterations", type=int, help="Iterations between two evaluations")
    parser.add_argument("--learning-rates", nargs="+", type=float, help="Learning rates to grid search")
    parser.add_argument("--no-resume", action="store_true", help="Start from scratch, ignoring checkpoints")
    parser.add_argument("--val-metric-type", type=MetricType, choices=list(MetricType), help="Validation metric")
    parser.add_argument(
        "--test-metric-types", type=MetricType, choices=list(MetricType), nargs="+", help="Evaluation metrics"
    )
    parser.add_argument("--classifier-fpath", type=str, help="Classifier checkpoint to load instead of training")
    parser.add_argument("--val-class-mapping-fpath", type=str, help=".npy mapping of validation classes")
    parser.add_argument(
        "--test-class-mapping-fpaths", nargs="+", type=str, help=".npy mappings of the test sets' classes"
    )
    # The transform sizes, for datasets of small images.
    parser.add_argument("--resize-size", type=int, help="Eval transform: shorter side resized to this")
    parser.add_argument("--crop-size", type=int, help="Train and eval transforms: crop size (model input)")
    parser.set_defaults(
        train_dataset_str="ImageNet:split=TRAIN",
        val_dataset_str="ImageNet:split=VAL",
        test_dataset_strs=None,
        epochs=10,
        batch_size=128,
        num_workers=8,
        epoch_length=1250,
        save_checkpoint_frequency=20,
        eval_period_iterations=1250,
        learning_rates=list(DEFAULT_LEARNING_RATES),
        val_metric_type=MetricType.MEAN_ACCURACY,
        test_metric_types=None,
        classifier_fpath=None,
        val_class_mapping_fpath=None,
        test_class_mapping_fpaths=[None],
        resize_size=256,
        crop_size=224,
    )
    return parser


def has_ddp_wrapper(m: nn.Module) -> bool:
    return isinstance(m, DistributedDataParallel)


def remove_ddp_wrapper(m: nn.Module) -> nn.Module:
    return m.module if has_ddp_wrapper(m) else m


def _pad_and_collate(batch: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collates multi-label targets of different lengths by padding them with -1 (ImageNet-ReaL)."""
    max_len = max(len(np.atleast_1d(target)) for _, target in batch)
    images = torch.stack([image for image, _ in batch])  # [B, 3, H, W]
    targets = torch.full((len(batch), max_len), -1, dtype=torch.long)  # [B, A]
    for i, (_, target) in enumerate(batch):
        values = torch.as_tensor(np.atleast_1d(target), dtype=torch.long)
        targets[i, : len(values)] = values
    return images, targets


def create_linear_input(
    x_tokens_list: Sequence[tuple[torch.Tensor, torch.Tensor]], use_n_blocks: int, use_avgpool: bool
) -> torch.Tensor:
    """CLS tokens of the last ``use_n_blocks`` blocks (block order), plus the last block's mean patch token.

    Always a new float tensor (``torch.cat`` copies), so it can feed a trainable head even when the backbone ran
    under ``inference_mode``.
    """
    intermediate_output = x_tokens_list[-use_n_blocks:]
    output = torch.cat([class_token for _, class_token in intermediate_output], dim=-1)  # [B, n*D]
    if use_avgpool:
        patch_mean = torch.mean(intermediate_output[-1][0], dim=1)  # [B, D]
        output = torch.cat((output, patch_mean), dim=-1)  # [B, (n+1)*D]
        output = output.reshape(output.shape[0], -1)
    return output.float()


class LinearClassifier(nn.Module):
    """Linear head over ``create_linear_input``; weights ~ N(0, 0.01^2), bias 0."""

    def __init__(self, out_dim: int, use_n_blocks: int, use_avgpool: bool, num_classes: int = 1000) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.use_n_blocks = use_n_blocks
        self.use_avgpool = use_avgpool
        self.num_classes = num_classes
        self.linear = nn.Linear(out_dim, num_classes)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x_tokens_list: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        output = create_linear_input(x_tokens_list, self.use_n_blocks, self.use_avgpool)
        return self.linear(output)  # [B, C]


class AllClassifiers(nn.Module):
    """All heads of the grid; forward returns ``{name: logits [B, C]}``."""

    def __init__(self, classifiers_dict: nn.ModuleDict) -> None:
        super().__init__()
        self.classifiers_dict = nn.ModuleDict()
        self.classifiers_dict.update(classifiers_dict)

    def forward(self, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {name: classifier.forward(inputs) for name, classifier in self.classifiers_dict.items()}

    def __len__(self) -> int:
        return len(self.classifiers_dict)


class LinearPostprocessor(nn.Module):
    """Logits of one head as metric predictions, optionally restricted to the columns of ``class_mapping``."""

    def __init__(self, linear_classifier: nn.Module, class_mapping: torch.Tensor | None = None) -> None:
        super().__init__()
        self.linear_classifier = linear_classifier
        self.register_buffer("class_mapping", None if class_mapping is None else torch.as_tensor(class_mapping).long())

    def forward(self, samples, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        preds = self.linear_classifier(samples)
        return {
            "preds": preds[:, self.class_mapping] if self.class_mapping is not None else preds,
            "target": targets,
        }


def scale_lr(learning_rates: float, batch_size: int) -> float:
    """Linear scaling to the global batch: ``lr * batch_size * world_size / 256``."""
    return learning_rates * (batch_size * distributed.get_global_size()) / 256.0


def _classifier_name(n: int, avgpool: bool, lr: float, taken: Iterable[str]) -> str:
    name = f"classifier_{n}_blocks_avgpool_{avgpool}_lr_{lr:.5f}".replace(".", "_")
    if name in taken:
        # Two scaled lrs that round to the same 5 decimals would share a name and overwrite each other; keep both.
        name = f"classifier_{n}_blocks_avgpool_{avgpool}_lr_{lr:.12f}".replace(".", "_")
    return name


def setup_linear_classifiers(
    sample_output: Sequence[tuple[torch.Tensor, torch.Tensor]],
    n_last_blocks_list: Sequence[int],
    learning_rates: Sequence[float],
    batch_size: int,
    num_classes: int = 1000,
) -> tuple[AllClassifiers, list[dict[str, Any]]]:
    """The head grid (``n_last_blocks`` x avgpool x lr) and one SGD param group per head with its scaled lr."""
    device = sample_output[-1][1].device
    linear_classifiers_dict = nn.ModuleDict()
    optim_param_groups = []
    for n in n_last_blocks_list:
        for avgpool in (False, True):
            for _lr in learning_rates:
                lr = scale_lr(_lr, batch_size)
                out_dim = create_linear_input(sample_output, use_n_blocks=n, use_avgpool=avgpool).shape[1]
                linear_classifier = LinearClassifier(
                    out_dim, use_n_blocks=n, use_avgpool=avgpool, num_classes=num_classes
                ).to(device)
                name = _classifier_name(n, avgpool, lr, linear_classifiers_dict.keys())
                linear_classifiers_dict[name] = linear_classifier
                optim_param_groups.append({"params": linear_classifier.parameters(), "lr": lr})
    return AllClassifiers(linear_classifiers_dict), optim_param_groups


def _top1_for_selection(result: dict[str, torch.Tensor]) -> float:
    """Scalar top-1 used to rank heads (the per-class metric is averaged over classes)."""
    return float(result["top-1"].float().mean())


@torch.no_grad()
def evaluate_linear_classifiers(
    feature_model: nn.Module,
    linear_classifiers: AllClassifiers,
    data_loader: Iterable,
    metric_type: MetricType,
    metrics_file_path: str,
    training_num_classes: int,
    iteration: int,
    prefixstring: str = "",
    class_mapping: torch.Tensor | None = None,
    best_classifier_on_val: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluates every head; the best is the top-1 maximum, or ``best_classifier_on_val`` when given (test sets).

    Appends ``iter: <it>``, ``{"best_classifier": {"name", "accuracy" (fraction)}}`` and a blank line to
    ``metrics_file_path`` on the main process.
    """
    logger.info("running validation !")
    num_classes = len(class_mapping) if class_mapping is not None else training_num_classes
    classifiers = remove_ddp_wrapper(linear_classifiers).classifiers_dict
    postprocessors = {name: LinearPostprocessor(head, class_mapping) for name, head in classifiers.items()}
    metrics = {name: build_metric(metric_type, num_classes=num_classes) for name in classifiers}
    device = get_model_device(feature_model)
    _, results_dict_temp = evaluate(feature_model, data_loader, postprocessors, metrics, device)

    max_accuracy, best_classifier = -1.0, ""
    for classifier_string, metric in results_dict_temp.items():
        logger.info("%s -- Classifier: %s * %s", prefixstring, classifier_string, _as_floats(metric))
        accuracy = _top1_for_selection(metric)
        if (best_classifier_on_val is None and accuracy > max_accuracy) or classifier_string == best_classifier_on_val:
            max_accuracy, best_classifier = accuracy, classifier_string

    results_dict = {"best_classifier": {"name": best_classifier, "accuracy": max_accuracy}}
    logger.info("best classifier: %s", results_dict["best_classifier"])
    append_results(metrics_file_path, [{key: value} for key, value in results_dict.items()], iteration=iteration)
    return results_dict


def _as_floats(metric: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {name: value.tolist() for name, value in metric.items()}


def _infinite(loader: Iterable) -> Iterator:
    """Repeats a finite loader; an infinite one (the sharded infinite sampler's) is passed through as is."""
    while True:
        yield from loader


def _average_gradients(module: nn.Module) -> None:
    """Mean of the heads' gradients over ranks (what DDP would do; a no-op in one process)."""
    world_size = distributed.get_global_size()
    if world_size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # [P]
    distributed.all_reduce(flat).div_(world_size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def eval_linear(
    *,
    feature_model: nn.Module,
    linear_classifiers: AllClassifiers,
    train_data_loader: Iterable,
    val_data_loader: Iterable,
    metrics_file_path: str,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    output_dir: str,
    max_iter: int,
    checkpoint_period: int,
    running_checkpoint_period: int,
    eval_period: int,
    metric_type: MetricType,
    training_num_classes: int,
    resume: bool = True,
    classifier_fpath: str | None = None,
    val_class_mapping: torch.Tensor | None = None,
    start_iter: int | None = None,
) -> tuple[dict, nn.Module, AllClassifiers, int]:
    """Trains all heads for ``max_iter`` iterations (resuming from ``output_dir``), evaluating periodically.

    The loss is the sum over heads of their cross-entropies, so one backward pass trains the whole grid.
    ``start_iter`` says the caller has already restored the heads, optimizer and scheduler (see
    :func:`_restore`); otherwise they are restored here.
    """
    checkpointer = Checkpointer(
        linear_classifiers,
        output_dir,
        save_to_disk=distributed.is_main_process(),
        optimizer=optimizer,
        scheduler=scheduler,
    )
    if start_iter is None:
        start_iter = checkpointer.resume_or_load(classifier_fpath or "", resume=resume).get("iteration", -1) + 1
    periodic_checkpointer = PeriodicCheckpointer(checkpointer, checkpoint_period, max_iter=max_iter)
    iteration = start_iter
    logger.info("Starting training from iteration %d", start_iter)
    with StopRequest() as stop_request:
        if iteration < max_iter:
            iteration = _train_linear_classifiers(
                feature_model=feature_model,
                linear_classifiers=linear_classifiers,
                train_data_loader=train_data_loader,
                val_data_loader=val_data_loader,
                metrics_file_path=metrics_file_path,
                optimizer=optimizer,
                scheduler=scheduler,
                periodic_checkpointer=periodic_checkpointer,
                max_iter=max_iter,
                start_iter=start_iter,
                running_checkpoint_period=running_checkpoint_period,
                eval_period=eval_period,
                metric_type=metric_type,
                training_num_classes=training_num_classes,
                val_class_mapping=val_class_mapping,
                stop_request=stop_request,
            )

    val_results_dict = evaluate_linear_classifiers(
        feature_model=feature_model,
        linear_classifiers=remove_ddp_wrapper(linear_classifiers),
        data_loader=val_data_loader,
        metrics_file_path=metrics_file_path,
        metric_type=metric_type,
        training_num_classes=training_num_classes,
        iteration=iteration,
        class_mapping=val_class_mapping,
    )
    return val_results_dict, feature_model, linear_classifiers, iteration


def _save_and_stop(periodic_checkpointer: PeriodicCheckpointer, iteration: int, stop_request: StopRequest) -> None:
    """Saves the running checkpoint and raises :class:`Stopped` (a stop signal arrived on some rank)."""
    if distributed.is_main_process():
        periodic_checkpointer.save("running_checkpoint_linear_eval", iteration=iteration)
    logger.info(
        "stopped by %s (preemption, time limit or kill): checkpoint of iteration %d saved; re-running the same "
        "command resumes from it",
        signal_name(stop_request.signum),
        iteration,
    )
    raise Stopped(f"stopped at iteration {iteration}")


def _train_linear_classifiers(
    *,
    feature_model: nn.Module,
    linear_classifiers: AllClassifiers,
    train_data_loader: Iterable,
    val_data_loader: Iterable,
    metrics_file_path: str,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    periodic_checkpointer: PeriodicCheckpointer,
    max_iter: int,
    start_iter: int,
    running_checkpoint_period: int,
    eval_period: int,
    metric_type: MetricType,
    training_num_classes: int,
    val_class_mapping: torch.Tensor | None,
    stop_request: StopRequest,
) -> int:
    """The training iterations from ``start_iter``; returns the iteration reached. On a stop signal the current
    iteration finishes, the running checkpoint is saved and :class:`Stopped` is raised (the job is requeued)."""
    device = get_model_device(feature_model)
    criterion = nn.CrossEntropyLoss()
    iteration = start_iter
    linear_classifiers.train()
    for data, labels in _infinite(train_data_loader):
        data, labels = data.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        outputs = linear_classifiers(feature_model(data))
        loss = sum(criterion(logits, labels) for logits in outputs.values())  # one backward trains every head
        optimizer.zero_grad()
        loss.backward()
        _average_gradients(linear_classifiers)
        optimizer.step()
        scheduler.step()
        if iteration % 10 == 0 or iteration == max_iter - 1:
            lr = optimizer.param_groups[0]["lr"]
            logger.info(
                "Training [%d/%d] loss (sum over %d heads): %.4f lr: %.6f", iteration + 1, max_iter, len(outputs),
                loss.item(), lr,
            )  # fmt: skip
        if iteration - start_iter > 5 and iteration % running_checkpoint_period == 0:
            if distributed.is_main_process():
                logger.info("Checkpointing running_checkpoint")
                periodic_checkpointer.save("running_checkpoint_linear_eval", iteration=iteration)
        periodic_checkpointer.step(iteration)
        if stop_request.any_rank():
            _save_and_stop(periodic_checkpointer, iteration, stop_request)

        if eval_period > 0 and (iteration + 1) % eval_period == 0 and iteration != max_iter - 1:
            evaluate_linear_classifiers(
                feature_model=feature_model,
                linear_classifiers=remove_ddp_wrapper(linear_classifiers),
                data_loader=val_data_loader,
                metrics_file_path=metrics_file_path,
                prefixstring=f"ITER: {iteration}",
                metric_type=metric_type,
                training_num_classes=training_num_classes,
                iteration=iteration,
                class_mapping=val_class_mapping,
            )
            linear_classifiers.train()
        iteration += 1
        if iteration >= max_iter:
            break
    return iteration


def make_eval_data_loader(
    test_dataset_str: str,
    batch_size: int,
    num_workers: int,
    metric_type: MetricType,
    *,
    transform: Callable | None = None,
    train_dataset: Dataset | None = None,
) -> Iterable:
    """Un-shuffled per-rank loader of ``test_dataset_str`` with the eval transform (padded multi-labels for ReaL);
    labelled with ``train_dataset``'s class indices, matched by class name, when given."""
    from dinov2.data import make_dataset
    from dinov2.data.transforms import make_classification_eval_transform

    test_dataset = make_dataset(
        dataset_str=test_dataset_str,
        transform=make_classification_eval_transform() if transform is None else transform,
    )
    if train_dataset is not None:
        test_dataset = align_to_train_classes(test_dataset, train_dataset, name=test_dataset_str)
    collate_fn = _pad_and_collate if metric_type == MetricType.IMAGENET_REAL_ACCURACY else None
    return make_inference_data_loader(
        test_dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn
    )


def test_on_datasets(
    feature_model: nn.Module,
    linear_classifiers: AllClassifiers,
    test_dataset_strs: Sequence[str],
    batch_size: int,
    num_workers: int,
    test_metric_types: Sequence[MetricType],
    metrics_file_path: str,
    training_num_classes: int,
    iteration: int,
    best_classifier_on_val: str,
    prefixstring: str = "",
    test_class_mappings: Sequence[torch.Tensor | None] = (None,),
    transform: Callable | None = None,
    train_dataset: Dataset | None = None,
) -> dict[str, float]:
    """Accuracy (in %) on each test set of the head chosen on validation."""
    results_dict = {}
    for test_dataset_str, class_mapping, metric_type in zip(test_dataset_strs, test_class_mappings, test_metric_types):
        logger.info("Testing on %s", test_dataset_str)
        test_data_loader = make_eval_data_loader(
            test_dataset_str, batch_size, num_workers, metric_type, transform=transform, train_dataset=train_dataset
        )
        dataset_results_dict = evaluate_linear_classifiers(
            feature_model,
            remove_ddp_wrapper(linear_classifiers),
            test_data_loader,
            metric_type,
            metrics_file_path,
            training_num_classes,
            iteration,
            prefixstring=prefixstring,
            class_mapping=class_mapping,
            best_classifier_on_val=best_classifier_on_val,
        )
        results_dict[f"{test_dataset_str}_accuracy"] = 100.0 * dataset_results_dict["best_classifier"]["accuracy"]
    return results_dict


def _get_targets(dataset) -> np.ndarray:
    if hasattr(dataset, "get_targets"):
        return np.asarray(dataset.get_targets())
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets)
    return np.asarray([dataset[i][1] for i in range(len(dataset))])


def _load_class_mapping(path: str | None) -> torch.Tensor | None:
    if path is None or path == "None":
        return None
    return torch.as_tensor(np.load(path)).long()


def make_train_data_loader(
    dataset: Dataset, *, batch_size: int, num_workers: int, seed: int = 0, start_iter: int = 0
) -> DataLoader:
    """The heads' infinite, sharded, shuffled training stream, continued after ``start_iter`` iterations.

    ``sampler_advance`` counts the samples consumed by all ranks together: ``start_iter`` iterations of
    ``batch_size`` samples on each of the world's ranks, so a resumed run does not replay samples it has already
    trained on.
    """
    from dinov2.data import SamplerType, make_data_loader

    return make_data_loader(
        dataset=dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=True,
        seed=seed,
        sampler_type=SamplerType.SHARDED_INFINITE,
        sampler_advance=start_iter * batch_size * distributed.get_global_size(),
        drop_last=True,
        persistent_workers=num_workers > 0,
    )


def _test_sets(
    val_dataset_str: str,
    val_metric_type: MetricType,
    test_dataset_strs: Sequence[str] | None,
    test_metric_types: Sequence[MetricType] | None,
    test_class_mapping_fpaths: Sequence[str | None],
) -> tuple[list[str], list[MetricType], list[str | None]]:
    """The test sets (the val set alone by default), each with its metric and its class-mapping file."""
    test_dataset_strs = list(test_dataset_strs or [val_dataset_str])
    test_metric_types = list(test_metric_types or [val_metric_type] * len(test_dataset_strs))
    if len(test_metric_types) != len(test_dataset_strs):
        raise ConfigError(
            f"{len(test_metric_types)} --test-metric-types for {len(test_dataset_strs)} --test-datasets; give one each"
        )
    mapping_fpaths = list(test_class_mapping_fpaths)
    if len(mapping_fpaths) == 1:
        mapping_fpaths *= len(test_dataset_strs)
    if len(mapping_fpaths) != len(test_dataset_strs):
        raise ConfigError(f"{len(mapping_fpaths)} --test-class-mapping-fpaths for {len(test_dataset_strs)} test sets")
    return test_dataset_strs, test_metric_types, mapping_fpaths


def _build_probe(
    model: nn.Module,
    train_dataset: Dataset,
    learning_rates: Sequence[float],
    batch_size: int,
    num_classes: int,
    autocast_dtype: torch.dtype,
    max_iter: int,
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, Any]:
    """The frozen feature model (the last blocks' tokens) and the grid of linear heads, with their SGD optimizer
    and cosine schedule; the heads' input sizes are read off one training image's features."""
    device = get_model_device(model)
    autocast_ctx = partial(autocast_context, device, autocast_dtype)
    feature_model = ModelWithIntermediateLayers(model, max(_N_LAST_BLOCKS_LIST), autocast_ctx)
    sample_output = feature_model(train_dataset[0][0].unsqueeze(0).to(device))
    linear_classifiers, optim_param_groups = setup_linear_classifiers(
        sample_output, _N_LAST_BLOCKS_LIST, learning_rates, batch_size, num_classes
    )
    optimizer = torch.optim.SGD(optim_param_groups, momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_iter, eta_min=0)
    return feature_model, linear_classifiers, optimizer, scheduler


def _final_results(
    feature_model: nn.Module,
    linear_classifiers: AllClassifiers,
    *,
    val_dataset_str: str,
    best_classifier: dict[str, Any],
    test_dataset_strs: Sequence[str],
    test_metric_types: Sequence[MetricType],
    test_class_mappings: Sequence[torch.Tensor | None],
    batch_size: int,
    metrics_file_path: str,
    training_num_classes: int,
    iteration: int,
    eval_transform: Callable | None,
    train_dataset: Any,
) -> dict[str, Any]:
    """The head chosen on the validation set, its validation accuracy and its accuracy on every test set that is
    not the validation set."""
    results_dict = {}
    if len(test_dataset_strs) > 1 or test_dataset_strs[0] != val_dataset_str:
        results_dict = test_on_datasets(
            feature_model,
            linear_classifiers,
            test_dataset_strs,
            batch_size,
            0,  # num_workers
            test_metric_types,
            metrics_file_path,
            training_num_classes,
            iteration,
            best_classifier["name"],
            prefixstring="",
            test_class_mappings=test_class_mappings,
            transform=eval_transform,
            train_dataset=train_dataset,
        )
    results_dict["best_classifier"] = best_classifier["name"]
    results_dict[f"{val_dataset_str}_accuracy"] = 100.0 * best_classifier["accuracy"]
    return results_dict


def _train_dataset(dataset_str: str, transform: Callable | None) -> Dataset:
    """The probe's training set, with the random-resized-crop + flip transform unless one is given."""
    from dinov2.data import make_dataset
    from dinov2.data.transforms import make_classification_train_transform

    return make_dataset(
        dataset_str=dataset_str, transform=make_classification_train_transform() if transform is None else transform
    )


def _restore(
    linear_classifiers: AllClassifiers,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    output_dir: str,
    classifier_fpath: str | None,
    resume: bool,
) -> int:
    """Loads the heads, optimizer and scheduler from the last checkpoint in ``output_dir`` (with ``resume``) or from
    ``classifier_fpath``; returns the iteration to start at (0 when there is nothing to load)."""
    checkpointer = Checkpointer(
        linear_classifiers, output_dir, save_to_disk=False, optimizer=optimizer, scheduler=scheduler
    )
    return checkpointer.resume_or_load(classifier_fpath or "", resume=resume).get("iteration", -1) + 1


def run_eval_linear(
    model: nn.Module,
    output_dir: str,
    *,
    train_dataset_str: str,
    val_dataset_str: str,
    batch_size: int,
    epochs: int,
    epoch_length: int,
    num_workers: int,
    save_checkpoint_frequency: int,
    eval_period_iterations: int,
    learning_rates: Sequence[float],
    autocast_dtype: torch.dtype,
    test_dataset_strs: Sequence[str] | None = None,
    resume: bool = True,
    classifier_fpath: str | None = None,
    val_class_mapping_fpath: str | None = None,
    test_class_mapping_fpaths: Sequence[str | None] = (None,),
    val_metric_type: MetricType = MetricType.MEAN_ACCURACY,
    test_metric_types: Sequence[MetricType] | None = None,
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
) -> dict[str, Any]:
    """Linear probe of ``model`` on dataset strings; returns the chosen head and its accuracies (in %)."""
    test_dataset_strs, test_metric_types, test_class_mapping_fpaths = _test_sets(
        val_dataset_str, val_metric_type, test_dataset_strs, test_metric_types, test_class_mapping_fpaths
    )
    os.makedirs(output_dir, exist_ok=True)
    train_dataset = _train_dataset(train_dataset_str, train_transform)
    training_num_classes = len(np.unique(_get_targets(train_dataset).astype(int)))
    max_iter = epochs * epoch_length
    feature_model, linear_classifiers, optimizer, scheduler = _build_probe(
        model, train_dataset, learning_rates, batch_size, training_num_classes, autocast_dtype, max_iter
    )
    # restored once, here: the train loader needs the position to skip the samples already seen
    start_iter = _restore(linear_classifiers, optimizer, scheduler, output_dir, classifier_fpath, resume)
    train_data_loader = make_train_data_loader(
        train_dataset, batch_size=batch_size, num_workers=num_workers, seed=0, start_iter=start_iter
    )
    val_data_loader = make_eval_data_loader(
        val_dataset_str, batch_size, num_workers, val_metric_type, transform=eval_transform, train_dataset=train_dataset
    )
    # read before training, so that a wrong mapping path fails at once
    val_class_mapping = _load_class_mapping(val_class_mapping_fpath)
    test_class_mappings = [_load_class_mapping(path) for path in test_class_mapping_fpaths]
    metrics_file_path = os.path.join(output_dir, "results_eval_linear.json")
    val_results_dict, feature_model, linear_classifiers, iteration = eval_linear(
        feature_model=feature_model,
        linear_classifiers=linear_classifiers,
        train_data_loader=train_data_loader,
        val_data_loader=val_data_loader,
        metrics_file_path=metrics_file_path,
        optimizer=optimizer,
        scheduler=scheduler,
        output_dir=output_dir,
        max_iter=max_iter,
        checkpoint_period=save_checkpoint_frequency * epoch_length,
        running_checkpoint_period=epoch_length,
        eval_period=eval_period_iterations,
        metric_type=val_metric_type,
        training_num_classes=training_num_classes,
        resume=resume,
        val_class_mapping=val_class_mapping,
        classifier_fpath=classifier_fpath,
        start_iter=start_iter,
    )
    results_dict = _final_results(
        feature_model,
        linear_classifiers,
        val_dataset_str=val_dataset_str,
        best_classifier=val_results_dict["best_classifier"],
        test_dataset_strs=test_dataset_strs,
        test_metric_types=test_metric_types,
        test_class_mappings=test_class_mappings,
        batch_size=batch_size,
        metrics_file_path=metrics_file_path,
        training_num_classes=training_num_classes,
        iteration=iteration,
        eval_transform=eval_transform,
        train_dataset=train_dataset,
    )
    logger.info("Test Results Dict %s", results_dict)
    return results_dict


def main(args: argparse.Namespace) -> int:
    from dinov2.data.transforms import make_classification_train_transform

    return run_eval(
        args,
        run_eval_linear,
        test_dataset_strs=args.test_dataset_strs,
        epochs=args.epochs,
        epoch_length=args.epoch_length,
        num_workers=args.num_workers,
        save_checkpoint_frequency=args.save_checkpoint_frequency,
        eval_period_iterations=args.eval_period_iterations,
        learning_rates=args.learning_rates,
        resume=not args.no_resume,
        classifier_fpath=args.classifier_fpath,
        val_metric_type=args.val_metric_type,
        test_metric_types=args.test_metric_types,
        val_class_mapping_fpath=args.val_class_mapping_fpath,
        test_class_mapping_fpaths=args.test_class_mapping_fpaths,
        train_transform=make_classification_train_transform(crop_size=args.crop_size),
        eval_transform=eval_transform_from_args(args),
    )


if __name__ == "__main__":
    run_cli(main, get_args_parser(description="DINOv2 linear evaluation"))
