import argparse
import importlib
import os
import sys
import types

import pytest

from dinov2.run.eval import knn, linear, log_regression
from dinov2.run.eval._evaluator import Evaluator


@pytest.fixture(autouse=True)
def _keep_logging_config(monkeypatch):
    """A launcher configures the package logger; in tests that would change what later tests' caplog sees."""
    import dinov2.logging

    monkeypatch.setattr(dinov2.logging, "setup_logging", lambda *args, **kwargs: None)


def test_evaluator_substitutes_job_id_and_runs_the_eval_main(submitit_local_task, monkeypatch):
    submitit_local_task("4242")
    calls = []
    fake = types.ModuleType("fake_eval")
    fake.main = lambda args: calls.append(args.output_dir) or 0
    monkeypatch.setitem(sys.modules, "fake_eval", fake)
    evaluator = Evaluator(argparse.Namespace(output_dir="/out/%j/knn"), "fake_eval")
    assert evaluator() == 0
    assert calls == ["/out/4242/knn"]


def test_evaluator_makes_the_tasks_of_a_local_job_torchrun_ranks(submitit_local_task, monkeypatch):
    submitit_local_task("4243", ntasks=2, rank=1)
    seen = []
    fake = types.ModuleType("fake_eval")
    fake.main = lambda args: seen.append({key: os.environ.get(key) for key in ("RANK", "WORLD_SIZE")}) or 0
    monkeypatch.setitem(sys.modules, "fake_eval", fake)
    Evaluator(argparse.Namespace(output_dir="/out/%j"), "fake_eval")()
    assert seen == [{"RANK": "1", "WORLD_SIZE": "2"}]


def test_checkpoint_requeues_same_arguments():
    import submitit

    args = argparse.Namespace(output_dir="/out/%j")
    requeued = knn.Evaluator(args).checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert isinstance(requeued.function, knn.Evaluator)
    assert requeued.function.args is args and requeued.function.main_module == "dinov2.eval.knn"


def test_each_launcher_targets_its_eval():
    args = argparse.Namespace(output_dir="")
    assert knn.Evaluator(args).main_module == "dinov2.eval.knn"
    assert linear.Evaluator(args).main_module == "dinov2.eval.linear"
    assert log_regression.Evaluator(args).main_module == "dinov2.eval.log_regression"


@pytest.mark.parametrize(
    ("launcher", "job_name", "eval_flags", "expected"),
    [
        (knn, "dinov2:knn", ["--nb_knn", "5", "20", "--temperature", "0.1"], {"nb_knn": [5, 20], "temperature": 0.1}),
        (linear, "dinov2:linear", ["--epochs", "2", "--no-resume"], {"epochs": 2, "no_resume": True}),
        (log_regression, "dinov2:logreg", ["--max-train-iters", "7"], {"max_train_iters": 7}),
    ],
)
def test_launcher_parses_eval_and_submit_flags_and_runs_its_eval(
    launcher, job_name, eval_flags, expected, submitit_local_task, monkeypatch, tmp_path
):
    submitit_local_task("4242")
    import dinov2.run.submit

    config_file = tmp_path / "config.yaml"
    config_file.write_text("{}\n")
    submitted, ran = [], []
    monkeypatch.setattr(dinov2.run.submit, "submit_jobs", lambda task, args, name: submitted.append((task, args, name)))
    monkeypatch.setattr(importlib.import_module(launcher.Evaluator.main_module), "main", ran.append)
    argv = ["--nodes", "2", "--config-file", str(config_file), "--output-dir", str(tmp_path / "%j"), *eval_flags]
    assert launcher.main(argv) == 0

    ((task_class, args, name),) = submitted
    assert task_class is launcher.Evaluator and name == job_name
    assert args.nodes == 2 and args.train_dataset_str == "ImageNet:split=TRAIN"  # a submit flag, an eval default
    assert {key: getattr(args, key) for key in expected} == expected
    task_class(args)()  # what the job runs
    assert ran == [args] and args.output_dir == str(tmp_path / "4242")


def test_launcher_rejects_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config-file"):
        knn.main(["--config-file", str(tmp_path / "missing.yaml")])


def test_launcher_accepts_packaged_config_names_and_checks_weights(tmp_path, monkeypatch):
    submitted = []
    monkeypatch.setattr("dinov2.run.submit.submit_jobs", lambda task_class, args, name: submitted.append(args))
    argv = ["--config-file", "eval/vits14_pretrain", "--pretrained-weights", "random", "--output-dir", str(tmp_path)]
    assert knn.main(argv) == 0
    assert submitted[0].config_file.endswith("dinov2/configs/eval/vits14_pretrain.yaml")
    assert os.path.isabs(submitted[0].config_file)
    with pytest.raises(FileNotFoundError, match="relative paths are resolved from"):
        knn.main(["--config-file", "eval/vits14_pretrain", "--pretrained-weights", "nowhere/teacher.pth"])
    (tmp_path / "teacher.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert knn.main(["--config-file", "eval/vits14_pretrain", "--pretrained-weights", "teacher.pth"]) == 0
    assert submitted[-1].pretrained_weights == str(tmp_path / "teacher.pth")  # absolute for the job
