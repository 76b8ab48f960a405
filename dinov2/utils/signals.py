"""Stop signals: a preemption or time limit (SLURM sends SIGUSR2 through submitit's ``--signal``, or SIGTERM), or a
user's ``kill``. Training loops record the signal, finish the current iteration, save a checkpoint and return;
the launcher then requeues the job (``dinov2.run``), which resumes from that checkpoint.
"""

import signal
import threading
from typing import Any

__all__ = ["STOP_SIGNALS", "StopRequest", "Stopped", "ignore_stop_signals", "signal_name"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Stopped(Exception):
    """Raised by a loop that saved its checkpoint after a stop signal (the run is incomplete, not failed)."""


class StopRequest:
    """Context manager recording the first stop signal received (``signum``, 0 if none); the handler only sets the
    flag, so the loop decides where to stop. The previous handlers (e.g. submitit's requeue handler) are restored on
    exit, so a launcher can hand the signal on afterwards."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def any_rank(self) -> bool:
        """Whether some rank received a stop signal (a collective: every rank must call it each time)."""
        import torch

        from dinov2 import distributed

        flag = torch.tensor([float(self.signum != 0)], device=distributed.get_collective_device())
        return bool(distributed.all_reduce(flag).item() > 0)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of the data loaders: SLURM signals every process of a job step, DataLoader workers
    included; only the main process of each task acts on it (the workers end with their loader)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name if signum else "none"
