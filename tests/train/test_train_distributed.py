"""Training with 2 gloo processes on CPU: same losses and weights as 1 process with the same global batch, and a
checkpoint written by 2 processes resumes in 1."""

from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from dinov2 import distributed
from dinov2.fsdp import full_state_dict
from dinov2.fsdp.checkpointer import Checkpointer
from dinov2.train import SSLMetaArch, main
from dinov2.train import train as train_module
from tests.distributed.spawn import run_ranks
from tests.train.conftest import make_args, make_cfg, use_tiny_depth

GLOBAL_BATCH = 4
STEPS = 3
# KoLeo uses each rank's own batch and the iBOT center averages per-rank means (both as in the reference), so
# they differ between 1 and 2 processes by design; Sinkhorn-Knopp targets and everything else are global.
EQUIVALENCE_OPTS = ("dino.koleo_loss_weight=0", "train.centering=sinkhorn_knopp")
PARTS = ("backbone", "dino_head", "ibot_head")


def _strategy_opts(strategy: str) -> tuple[str, ...]:
    return tuple(
        f"compute_precision.{m}.{p}.sharding_strategy={strategy}" for m in ("student", "teacher") for p in PARTS
    )


def _rank_slice(batch: dict, rank: int, world: int) -> dict:
    """Rank ``rank``'s share of a collated global batch (crops are stored crop-index major), with its mask
    bookkeeping recomputed as the collate function would."""
    batch_size = batch["collated_global_crops"].shape[0] // 2
    share = batch_size // world

    def rows(tensor: torch.Tensor) -> torch.Tensor:
        n_crops = tensor.shape[0] // batch_size
        starts = [crop * batch_size + rank * share for crop in range(n_crops)]
        return torch.cat([tensor[start : start + share] for start in starts])

    masks = rows(batch["collated_masks"])  # [2b, N]
    per_crop = masks.sum(dim=-1, keepdim=True).clamp(min=1).float()  # [2b, 1]
    mask_indices = masks.flatten().nonzero().flatten()  # [M]
    return {
        "collated_global_crops": rows(batch["collated_global_crops"]),
        "collated_local_crops": rows(batch["collated_local_crops"]),
        "collated_masks": masks,
        "mask_indices_list": mask_indices,
        "masks_weight": (1.0 / per_crop).expand_as(masks)[masks],
        "upperbound": batch["upperbound"],
        "n_masked_patches": torch.tensor([mask_indices.shape[0]]),
    }


def _train_steps(cfg, batches: list[dict]) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """``STEPS`` training steps from a seeded init on this rank's share of ``batches``; returns the rank-mean
    losses and the full state dict (on rank 0)."""
    rank, world = distributed.get_global_rank(), distributed.get_global_size()
    torch.manual_seed(rank)  # as train.py seeds (seed + rank): every rank must still start from rank 0's init
    model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    model.train()
    optimizer = train_module.build_optimizer(cfg, model.get_params_groups())
    schedulers = train_module.build_schedulers(cfg)
    losses = []
    for iteration, batch in enumerate(batches):
        scheduled = train_module.scheduled_values(schedulers, iteration)
        result = train_module.train_step(cfg, model, optimizer, _rank_slice(batch, rank, world), scheduled)
        losses.append(result.losses)
    return losses, full_state_dict(model)


def _equivalence_worker(rank: int, output_dir: str, image_root: str) -> None:
    use_tiny_depth()
    batches = torch.load(Path(output_dir) / "batches.pt", weights_only=False)
    for strategy in ("NO_SHARD", "SHARD_GRAD_OP"):
        opts = (*EQUIVALENCE_OPTS, f"train.batch_size_per_gpu={GLOBAL_BATCH // 2}", *_strategy_opts(strategy))
        cfg = make_cfg(Path(output_dir), Path(image_root), *opts)
        losses, state = _train_steps(cfg, batches)
        if rank == 0:
            torch.save({"losses": losses, "state": state}, Path(output_dir) / f"two_ranks_{strategy}.pt")


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path, image_root: Path) -> None:
    cfg = make_cfg(tmp_path, image_root, *EQUIVALENCE_OPTS, f"train.batch_size_per_gpu={GLOBAL_BATCH}")
    stream = iter(train_module.build_data_loader(cfg))
    batches = [next(stream) for _ in range(STEPS)]
    torch.save(batches, tmp_path / "batches.pt")
    losses, state = _train_steps(cfg, batches)

    run_ranks(_equivalence_worker, 2, str(tmp_path), str(image_root), timeout_s=300)
    for strategy in ("NO_SHARD", "SHARD_GRAD_OP"):
        two = torch.load(tmp_path / f"two_ranks_{strategy}.pt", weights_only=False)
        assert (
            two["losses"][0].keys()
            == losses[0].keys()
            == {"dino_local_crops_loss", "dino_global_crops_loss", "ibot_loss"}
        )
        for step, (one_step, two_step) in enumerate(zip(losses, two["losses"])):
            for name in one_step:
                assert two_step[name] == pytest.approx(one_step[name], rel=1e-4), (strategy, step, name)
        assert two["state"].keys() == state.keys()
        for key, value in state.items():
            torch.testing.assert_close(two["state"][key], value, rtol=1e-4, atol=2e-5, msg=f"{strategy} {key}")


def _full_model_and_optimizer_state(cfg, path: Path) -> dict:
    model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    optimizer = train_module.build_optimizer(cfg, model.get_params_groups())
    Checkpointer(cfg.train.output_dir).load(path, model=model, optimizer=optimizer, restore_rng=False)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    return {"model": model_state, "optimizer": optimizer_state}


def _two_rank_training_worker(rank: int, output_dir: str, image_root: str) -> None:
    use_tiny_depth()
    opts = (
        f"train.batch_size_per_gpu={GLOBAL_BATCH // 2}",
        "train.OFFICIAL_EPOCH_LENGTH=3",
        "evaluation.eval_period_iterations=3",
        "compute_precision.student.backbone.sharding_strategy=SHARD_GRAD_OP",
        "compute_precision.teacher.backbone.sharding_strategy=SHARD_GRAD_OP",
    )
    main(make_args(Path(output_dir), Path(image_root), *opts))
    cfg = make_cfg(Path(output_dir), Path(image_root), *opts)
    state = _full_model_and_optimizer_state(cfg, Checkpointer(output_dir).latest())
    if rank == 0:
        torch.save(state, Path(output_dir) / "loaded_by_two_ranks.pt")


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_in_one(tmp_path: Path, image_root: Path) -> None:
    # srun-style SLURM_* variables (the equivalence test above uses torchrun-style ones)
    run_ranks(_two_rank_training_worker, 2, str(tmp_path), str(image_root), launcher="slurm", timeout_s=300)
    latest = Checkpointer(tmp_path).latest()
    assert latest.name == "0000002"
    extras = [torch.load(latest / f"extra_rank_{r}.pt", weights_only=False) for r in range(2)]
    assert [extra["samples_seen"] for extra in extras] == [3 * GLOBAL_BATCH] * 2
    two = torch.load(tmp_path / "loaded_by_two_ranks.pt", weights_only=False)
    cfg = make_cfg(tmp_path, image_root, f"train.batch_size_per_gpu={GLOBAL_BATCH}", "train.OFFICIAL_EPOCH_LENGTH=3")
    one = _full_model_and_optimizer_state(cfg, latest)

    assert one["model"].keys() == two["model"].keys()
    for key, value in one["model"].items():
        assert torch.equal(value, two["model"][key]), key
    torch.manual_seed(0)
    fresh = SSLMetaArch(cfg).state_dict()
    assert not torch.equal(fresh["student.backbone.cls_token"], one["model"]["student.backbone.cls_token"])
    assert one["model"]["dino_loss.center"].abs().sum() > 0
    assert one["optimizer"]["state"].keys() == two["optimizer"]["state"].keys()
    for name, state in one["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(two["optimizer"]["state"][name][key])), name
    assert int(next(iter(one["optimizer"]["state"].values()))["step"]) == 3
    # the teacher export gathered by the 2 ranks holds the checkpoint's teacher
    exported = torch.load(tmp_path / "eval" / "training_2" / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    for key, value in exported.items():
        assert torch.equal(value, one["model"][f"teacher.{key}"]), key

    # and training goes on in one process (a longer schedule, so there is something left to do)
    resumed = main(
        make_args(
            tmp_path,
            image_root,
            *(f"train.batch_size_per_gpu={GLOBAL_BATCH}", "train.OFFICIAL_EPOCH_LENGTH=3", "optim.epochs=2"),
            resume_with_changes=True,  # the same global batch on one rank, and a longer run
        )
    )
    assert resumed["iteration"] == 5 and Checkpointer(tmp_path).latest().name == "0000005"


SHARDED_STEP_OPTS = ("train.centering=sinkhorn_knopp", "student.drop_path_rate=0.0")


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().cpu().clone()


def _sharded_step_worker(rank: int, output_dir: str, image_root: str) -> None:
    """One training step per sharding strategy on this rank's half of the same batch; rank 0 saves the losses,
    the full student gradients, the post-step weights (student and teacher) and the warnings raised."""
    import warnings

    use_tiny_depth()
    batch = _rank_slice(torch.load(Path(output_dir) / "batches.pt", weights_only=False)[0], rank, 2)
    results = {}
    for strategy in ("NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD"):
        opts = (*SHARDED_STEP_OPTS, f"train.batch_size_per_gpu={GLOBAL_BATCH // 2}", *_strategy_opts(strategy))
        cfg = make_cfg(Path(output_dir), Path(image_root), *opts)
        torch.manual_seed(rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = SSLMetaArch(cfg)
            model.prepare_for_distributed_training()
            model.train()
            optimizer = train_module.build_optimizer(cfg, model.get_params_groups())
            scheduled = train_module.scheduled_values(train_module.build_schedulers(cfg), 1)
            train_module.apply_optim_scheduler(optimizer, scheduled["lr"], scheduled["wd"], scheduled["last_layer_lr"])
            optimizer.zero_grad(set_to_none=True)
            losses = model.forward_backward(batch, teacher_temp=scheduled["teacher_temp"])
            grads = {name: _full(p.grad) for name, p in model.student.named_parameters() if p.grad is not None}
            train_module._optimizer_step(cfg, model, optimizer)
            model.update_teacher(scheduled["mom"])
            state = full_state_dict(model)
        losses = {name: float(distributed.all_reduce(value.detach().clone()) / 2) for name, value in losses.items()}
        results[strategy] = {
            "losses": losses,
            "grads": grads,
            "state": state,
            "warnings": [str(w.message) for w in caught],
        }
    if rank == 0:
        torch.save(results, Path(output_dir) / "sharded_step.pt")


@pytest.mark.slow
def test_sharded_step_matches_the_replicated_step(tmp_path: Path, image_root: Path) -> None:
    """The real SSLMetaArch (ViT, DINO + iBOT + KoLeo heads and losses, Sinkhorn-Knopp, masking), one step on 2
    ranks: FULL_SHARD and SHARD_GRAD_OP give the losses, gradients, post-step student and teacher weights of the
    unsharded (NO_SHARD) step, and FSDP logs no "returned a view tensor" warning."""
    cfg = make_cfg(tmp_path, image_root, *SHARDED_STEP_OPTS, f"train.batch_size_per_gpu={GLOBAL_BATCH}")
    batch = next(iter(train_module.build_data_loader(cfg)))
    assert batch["mask_indices_list"].numel() > 0  # iBOT has masked tokens to work on
    torch.save([batch], tmp_path / "batches.pt")
    run_ranks(_sharded_step_worker, 2, str(tmp_path), str(image_root), timeout_s=300)
    results = torch.load(tmp_path / "sharded_step.pt", weights_only=False)
    reference = results["NO_SHARD"]
    assert set(reference["losses"]) == {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"}
    assert len(reference["grads"]) > 20
    for strategy in ("SHARD_GRAD_OP", "FULL_SHARD"):
        sharded = results[strategy]
        for name, value in reference["losses"].items():
            assert sharded["losses"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (strategy, name)
        assert sharded["grads"].keys() == reference["grads"].keys()
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(sharded["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=f"{strategy} {name}")
        assert sharded["state"].keys() == reference["state"].keys()
        for key, value in reference["state"].items():  # student and teacher weights after the step, centers
            torch.testing.assert_close(sharded["state"][key], value, rtol=1e-5, atol=1e-6, msg=f"{strategy} {key}")
    for strategy, result in results.items():
        assert not [w for w in result["warnings"] if "returned a view tensor" in w], strategy
