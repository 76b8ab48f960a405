import os
from collections.abc import Callable

import pytest


@pytest.fixture
def submitit_local_task(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``enter(job_id, ntasks=1, rank=0)`` sets what submitit's local executor sets inside task ``rank`` of a job.

    SLURM and torchrun variables are cleared first, and whatever the task exports is removed after the test.
    """
    for key in [key for key in os.environ if key.startswith("SLURM_") or key == "TORCHELASTIC_RUN_ID"]:
        monkeypatch.delenv(key)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "placeholder")  # so that monkeypatch removes what the task exports
        monkeypatch.delenv(key)

    def enter(job_id: str, ntasks: int = 1, rank: int = 0) -> None:
        env = {
            "SUBMITIT_EXECUTOR": "local",
            "SUBMITIT_LOCAL_JOB_ID": job_id,
            "SUBMITIT_LOCAL_NTASKS": str(ntasks),
            "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
            "SUBMITIT_LOCAL_NODEID": "0",
            "SUBMITIT_LOCAL_GLOBALID": str(rank),
            "SUBMITIT_LOCAL_LOCALID": str(rank),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return enter
