import argparse
import sys
import types

import pytest

from dinov2.run.eval import knn, linear, log_regression
from dinov2.run.eval._evaluator import Evaluator


@pytest.fixture
def local_job_env(monkeypatch):
    """The variables submitit's local executor sets inside a job (job id 4242, one task)."""
    env = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_evaluator_substitutes_job_id_and_runs_the_eval_main(local_job_env, monkeypatch):
    calls = []
    fake = types.ModuleType("fake_eval")
    fake.main = lambda args: calls.append(args.output_dir) or 0
    monkeypatch.setitem(sys.modules, "fake_eval", fake)
    evaluator = Evaluator(argparse.Namespace(output_dir="/out/%j/knn"), "fake_eval")
    assert evaluator() == 0
    assert calls == ["/out/4242/knn"]


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
