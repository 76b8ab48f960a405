"""Sinkhorn-Knopp and center all-reduces under 2 gloo processes equal one process on the concatenated batch."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinov2.loss import DINOLoss, iBOTPatchLoss

K = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "cls": torch.randn(8, K, generator=g) * 0.5,  # 4 rows per rank
        "patch": torch.randn(7, K, generator=g) * 0.5,  # 3 masked tokens on rank 0, 4 on rank 1
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        data = _inputs()
        cls = data["cls"].chunk(2)[rank]
        patch = data["patch"][:3] if rank == 0 else data["patch"][3:]
        dino, ibot = DINOLoss(K), iBOTPatchLoss(K)
        result = {
            "dino_sk": dino.sinkhorn_knopp_teacher(cls, 0.05),
            "ibot_sk": ibot.sinkhorn_knopp_teacher(patch, 0.05, torch.tensor([patch.shape[0]])),
        }
        dino.update_center(cls)
        ibot.update_center(patch.unsqueeze(0))
        result["dino_center"] = dino.state_dict()["center"]
        result["ibot_center"] = ibot.state_dict()["center"]
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 processes: 2-8 s depending on machine load
def test_two_process_sinkhorn_and_centers(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    data = _inputs()

    single = DINOLoss(K).sinkhorn_knopp_teacher(data["cls"], 0.05)
    torch.testing.assert_close(torch.cat([r0["dino_sk"], r1["dino_sk"]]), single)
    single = iBOTPatchLoss(K).sinkhorn_knopp_teacher(data["patch"], 0.05, torch.tensor([7]))
    torch.testing.assert_close(torch.cat([r0["ibot_sk"], r1["ibot_sk"]]), single)

    expected_dino = 0.1 * data["cls"].mean(dim=0, keepdim=True)  # global mean over all ranks' rows
    torch.testing.assert_close(r0["dino_center"], expected_dino)
    torch.testing.assert_close(r1["dino_center"], expected_dino)
    # iBOT: unweighted average over ranks of each rank's mean over its masked tokens (reference semantics)
    rank_means = (data["patch"][:3].mean(dim=0) + data["patch"][3:].mean(dim=0)) / 2
    torch.testing.assert_close(r0["ibot_center"], 0.1 * rank_means.view(1, 1, K))
    torch.testing.assert_close(r1["ibot_center"], r0["ibot_center"])
