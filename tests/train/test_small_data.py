"""Small-data training: the monitor's fields and the online k-NN in training_metrics.json, self-describing
teacher exports, and the recipe scaled to the data (derived keys, explicit keys kept, time budget)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import dinov2.logging
from dinov2.eval import knn
from dinov2.hub.backbones import dinov2_vits14
from dinov2.train import main
from dinov2.train.recipe import DataFacts, derive_recipe
from dinov2.train.train import use_cpu_threads
from tests.train.conftest import TINY_DEPTH, make_args


def _write_labelled(root: Path, per_class: int = 6) -> Path:
    """Two classes told apart by the side of a bright band."""
    rng = np.random.default_rng(1)
    for label, side in (("left", slice(0, 12)), ("right", slice(28, 40))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((40, 40, 3), rng.integers(0, 80), dtype=np.uint8)
            pixels[:, side] = 200 + rng.integers(0, 50)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]


@pytest.mark.slow
def test_metrics_hold_the_monitor_and_the_online_knn(
    tmp_path: Path, image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labelled = _write_labelled(tmp_path / "labelled")
    out = tmp_path / "run"
    main(
        make_args(
            out,
            image_root,
            "evaluation.eval_period_iterations=3",
            f"evaluation.online_knn.train_dataset=ImageFolder:root={labelled}",
            f"evaluation.online_knn.val_dataset=ImageFolder:root={labelled}",
            "evaluation.online_knn.k=3",
        )
    )
    records = _records(out)
    steps = [r for r in records if "total_loss" in r]
    for key in ("teacher_cls_std", "teacher_entropy", "teacher_usage_entropy", "dino_global_crops_loss_vs_uniform"):
        assert all(key in r and np.isfinite(r[key]) for r in steps), key
    online = [(r["iteration"], r["online_knn_top1"]) for r in records if "online_knn_top1" in r]
    assert [it for it, _ in online] == [2, 5]
    assert all(0.0 <= top1 <= 100.0 for _, top1 in online)

    export = torch.load(out / "eval" / "training_5" / "teacher_checkpoint.pth", weights_only=True)
    assert export["backbone_args"]["img_size"] == 32 and export["backbone_args"]["arch"] == "vit_tiny"
    # The hub builds the matching model from the file alone (not a ViT-S at 518 px).
    backbone = dinov2_vits14(weights=str(out / "eval" / "training_5" / "teacher_checkpoint.pth"), depth=TINY_DEPTH)
    assert backbone.embed_dim == 192 and backbone.patch_size == 8
    assert torch.equal(backbone.pos_embed, export["teacher"]["backbone.pos_embed"])

    # So do the eval CLIs, without --config-file.
    monkeypatch.setattr(dinov2.logging, "setup_logging", lambda **kwargs: None)
    argv = [
        "--pretrained-weights", str(out / "eval" / "training_5" / "teacher_checkpoint.pth"),
        "--output-dir", str(tmp_path / "knn"), "--train-dataset", f"ImageFolder:root={labelled}",
        "--val-dataset", f"ImageFolder:root={labelled}", "--nb_knn", "3", "--resize-size", "32", "--crop-size", "32",
        "--num-workers", "0", "--batch-size", "4",
    ]  # fmt: skip
    assert knn.main(knn.get_args_parser().parse_args(argv)) == 0
    assert "('full', 3) Top 1" in (tmp_path / "knn" / "results_eval_knn.json").read_text()


def test_online_knn_needs_both_datasets(tmp_path: Path, image_root: Path) -> None:
    args = make_args(tmp_path, image_root, f"evaluation.online_knn.train_dataset=ImageFolder:root={image_root}")
    with pytest.raises(ValueError, match="val_dataset is empty"):
        main(args)


@pytest.mark.parametrize(
    ("n_images", "image_size", "prototypes", "patch", "global_size", "local_size"),
    [
        (5_000, 28, 1024, 9, 27, 18),
        (5_000, 48, 1024, 16, 48, 32),
        (30_000, 64, 2048, 16, 64, 32),
        (60_000, 96, 4096, 16, 96, 48),
        (1_000_000, 500, None, 16, 224, 96),
    ],
)
def test_recipe_scales_with_the_data(
    n_images: int, image_size: int, prototypes: int | None, patch: int, global_size: int, local_size: int
) -> None:
    recipe = derive_recipe(DataFacts(n_images, image_size), depth=12, global_batch=64, iterations=None)
    assert recipe.get("dino.head_n_prototypes") == prototypes
    assert recipe["student.patch_size"] == patch
    assert (recipe["crops.global_crops_size"], recipe["crops.local_crops_size"]) == (global_size, local_size)
    assert recipe["student.layerscale"] == 0.1
    assert recipe["crops.color_on_batch"] is True and recipe["crops.fast_crops"] is True
    # about 2M samples, 10 to 300 epochs, stretched over 100 "epochs" of the schedule
    epochs = min(300, max(10, round(2_000_000 / n_images)))
    target = epochs * n_images / 64
    assert target - 100 < recipe["train.OFFICIAL_EPOCH_LENGTH"] * 100 <= max(100, target)


def test_recipe_keeps_layerscale_of_deep_networks_and_follows_the_budget() -> None:
    recipe = derive_recipe(DataFacts(5_000, 28), depth=24, global_batch=64, iterations=1_000)
    assert recipe["student.layerscale"] == 1e-5
    assert recipe["optim.epochs"] == 100
    assert recipe["train.OFFICIAL_EPOCH_LENGTH"] == 10 and recipe["optim.epochs"] == 100
    # rounded down: a budget of 1099 iterations never runs 1100
    longer = derive_recipe(DataFacts(5_000, 28), depth=6, global_batch=64, iterations=1_099)
    assert longer["train.OFFICIAL_EPOCH_LENGTH"] == 10
    assert recipe["teacher.momentum_teacher"] == 0.99
    assert recipe["evaluation.eval_period_iterations"] == 200


@pytest.mark.parametrize(
    "iterations, start, final",
    [(1_500, 0.99, 0.99), (4_000, 0.995, 0.995), (19_999, 0.996, 0.996), (50_000, 0.996, 1.0)],
)
def test_recipe_holds_the_teacher_momentum_in_short_runs(iterations: int, start: float, final: float) -> None:
    recipe = derive_recipe(DataFacts(5_000, 28), depth=6, global_batch=64, iterations=iterations)
    assert (recipe["teacher.momentum_teacher"], recipe["teacher.final_momentum_teacher"]) == (start, final)


@pytest.mark.slow
def test_recipe_auto_writes_the_values_used_and_keeps_explicit_keys(tmp_path: Path, image_root: Path) -> None:
    main(make_args(tmp_path, image_root, "recipe.auto=true", "teacher.teacher_temp=0.05"))
    cfg = OmegaConf.load(tmp_path / "config.yaml")
    assert cfg.student.layerscale == 0.1  # derived (the config file does not set it)
    assert cfg.teacher.teacher_temp == 0.05  # set on the command line: kept
    assert cfg.crops.global_crops_size == 32  # set on the command line (TINY_OPTS): kept
    assert cfg.dino.head_n_prototypes == 64  # TINY_OPTS: kept
    assert cfg.optim.layerwise_decay == 1.0


def _budget_args(output_dir: Path, image_root: Path, *opts: str):
    """The vit_tiny_cpu config (it sets 5 epochs of 20 iterations) with a time budget."""
    from dinov2.train import get_args_parser

    argv = ["--config-file", "train/vit_tiny_cpu", "--output-dir", str(output_dir)]
    argv += [flag for flag in opts if flag.startswith("--")]
    argv += [f"train.dataset_path=ImageFolder:root={image_root}", "train.num_workers=0", "train.batch_size_per_gpu=4"]
    return get_args_parser(add_help=False).parse_args([*argv, *(opt for opt in opts if not opt.startswith("--"))])


@pytest.mark.slow
def test_time_budget_sets_the_epoch_length_and_a_resume_reuses_it(tmp_path: Path, image_root: Path) -> None:
    main(_budget_args(tmp_path, image_root, "recipe.budget_minutes=0.02"))
    record = json.loads((tmp_path / "recipe.json").read_text())
    assert record["budget_minutes"] == 0.02 and record["seconds_per_iteration"] > 0 and record["iterations"] >= 10
    cfg = OmegaConf.load(tmp_path / "config.yaml")
    # The budget replaces the config file's epoch length; optim.epochs (5, from the file) keeps its meaning.
    assert cfg.optim.epochs == 5
    assert cfg.train.OFFICIAL_EPOCH_LENGTH == max(1, record["iterations"] // 5)  # rounded down: within the budget
    last = max(r["iteration"] for r in _records(tmp_path))
    assert last == 5 * cfg.train.OFFICIAL_EPOCH_LENGTH - 1

    # Same budget again: no new calibration, the recorded length is used (here edited, to see that it is read).
    (tmp_path / "recipe.json").write_text(json.dumps({**record, "iterations": 50}))
    main(_budget_args(tmp_path, image_root, "--resume-with-changes", "recipe.budget_minutes=0.02"))
    assert OmegaConf.load(tmp_path / "config.yaml").train.OFFICIAL_EPOCH_LENGTH == 10


def test_time_budget_and_an_epoch_length_override_conflict(tmp_path: Path, image_root: Path) -> None:
    args = _budget_args(tmp_path, image_root, "recipe.budget_minutes=1", "train.OFFICIAL_EPOCH_LENGTH=7")
    with pytest.raises(ValueError, match="drop one of the two"):
        main(args)


@pytest.mark.slow
def test_resume_refuses_a_changed_config_unless_the_change_is_safe(tmp_path: Path, image_root: Path) -> None:
    main(make_args(tmp_path, image_root))
    with pytest.raises(ValueError, match=r"student.layerscale: 1e-05 -> 0.1.*another --output-dir.*cannot change"):
        main(make_args(tmp_path, image_root, "student.layerscale=0.1"))
    with pytest.raises(ValueError, match="cannot change on resume: student.layerscale"):
        main(make_args(tmp_path, image_root, "student.layerscale=0.1", resume_with_changes=True))
    assert OmegaConf.load(tmp_path / "config.yaml").student.layerscale == 1e-5  # the run's config is kept
    with pytest.raises(ValueError, match="--resume-with-changes"):
        main(make_args(tmp_path, image_root, "optim.epochs=2"))
    result = main(make_args(tmp_path, image_root, "optim.epochs=2", resume_with_changes=True))  # a longer run
    assert result["iteration"] == 11 and OmegaConf.load(tmp_path / "config.yaml").optim.epochs == 2
    assert main(make_args(tmp_path, image_root, "student.layerscale=0.1", no_resume=True))["iteration"] == 5


def test_cpu_threads_set_the_threads_of_a_cpu_run() -> None:
    before = torch.get_num_threads()
    try:
        use_cpu_threads(OmegaConf.create({"train": {"cpu_threads": 1}}))
        assert torch.get_num_threads() == 1
        use_cpu_threads(OmegaConf.create({"train": {"cpu_threads": 0}}))  # 0 leaves the setting alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("cpus", "workers"), [(1, 0), (2, 0), (3, 2), (8, 7), (32, 10)])
def test_recipe_loads_in_the_training_process_on_two_cores(cpus: int, workers: int) -> None:
    recipe = derive_recipe(DataFacts(5_000, 28), depth=4, global_batch=64, iterations=100, cpus_per_rank=cpus)
    assert recipe["train.num_workers"] == workers
    assert "train.cpu_threads" not in recipe  # an accelerator trains: the threads stay PyTorch's


@pytest.mark.parametrize(
    ("cpus", "default_threads", "workers", "threads"),
    [(1, 1, 0, 1), (2, 2, 0, 2), (4, 4, 1, 3), (16, 16, 3, 13), (16, 8, 3, 8), (64, 64, 13, 51)],
)
def test_recipe_splits_the_cores_of_a_cpu_run(cpus: int, default_threads: int, workers: int, threads: int) -> None:
    recipe = derive_recipe(
        DataFacts(5_000, 28), depth=4, global_batch=64, iterations=100, cpus_per_rank=cpus, cpu_threads=default_threads
    )
    assert (recipe["train.num_workers"], recipe["train.cpu_threads"]) == (workers, threads)


def test_recipe_leaves_the_cores_of_the_users_workers() -> None:
    recipe = derive_recipe(
        DataFacts(5_000, 28), depth=4, global_batch=64, iterations=100, cpus_per_rank=16, cpu_threads=16, num_workers=8
    )
    assert (recipe["train.num_workers"], recipe["train.cpu_threads"]) == (8, 8)
