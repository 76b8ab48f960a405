"""The SLURM launchers take every config name training takes: a path or a packaged name such as ``train/vitl14``."""

from pathlib import Path

import pytest

from dinov2.errors import MissingPathError
from dinov2.run.train import train as launcher
from dinov2.utils.config import resolve_config_file


def test_packaged_names_resolve_to_the_packaged_files():
    path = resolve_config_file("train/vitl14")
    assert path.is_file() and path.parts[-3:] == ("configs", "train", "vitl14.yaml")
    assert resolve_config_file("train/vitl14.yaml") == path


def test_the_training_launcher_submits_a_packaged_config_by_its_file(monkeypatch, tmp_path: Path):
    submitted = {}
    monkeypatch.setattr(launcher, "submit_jobs", lambda task, args, name: submitted.update(args=args))
    launcher.main(["--config-file", "train/vitl14", "--output-dir", str(tmp_path), "--ngpus", "0"])
    assert Path(submitted["args"].config_file) == resolve_config_file("train/vitl14")


def test_an_unknown_config_name_lists_the_packaged_ones():
    with pytest.raises(MissingPathError, match="train/vitl14"):
        resolve_config_file("train/no_such_config")


def test_the_eval_launchers_submit_a_packaged_config_by_its_file(monkeypatch, tmp_path: Path):
    import dinov2.run.submit as submit
    from dinov2.run.eval import _evaluator

    submitted = {}
    monkeypatch.setattr(submit, "submit_jobs", lambda task, args, name: submitted.update(args=args))
    argv = ["--config-file", "eval/vits14_pretrain", "--pretrained-weights", "random", "--output-dir", str(tmp_path)]
    _evaluator.submit_eval(_evaluator.KnnEvaluator, [*argv, "--ngpus", "0"])
    assert Path(submitted["args"].config_file) == resolve_config_file("eval/vits14_pretrain")
