"""Pieces shared by the DINO and iBOT losses: the momentum center with its deferred all-reduce, and Sinkhorn-Knopp.

Centering: the batch statistic of step t is summed locally, all-reduced asynchronously (so the communication
overlaps the student pass) and folded into ``center`` only when the next target is computed, i.e. the center
used at step t holds the teacher outputs up to step t-1.

Checkpointing: a pending (not yet folded) update is part of the state. ``state_dict()`` therefore folds it in first
(a state-dict pre-hook calls ``apply_center_update``), which gives exactly the center the next step would have used,
so a resumed run continues bit for bit. ``load_state_dict()`` drops any pending update (the loaded center replaces
it) after waiting for its communication to finish.
"""

import math

import torch
from torch import nn

from dinov2 import distributed


class _MomentumCenter(nn.Module):
    """Holds the ``center`` buffer and the deferred-update machinery of the DINO and iBOT losses."""

    def __init__(self, center_shape: tuple[int, ...], center_momentum: float) -> None:
        super().__init__()
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(center_shape))  # [1, K] or [1, 1, K], float32
        self.updated = True
        self.reduce_handle = None
        self.len_teacher_output: int | None = None
        self.async_batch_center: torch.Tensor | None = None
        self.register_state_dict_pre_hook(_fold_pending_update_before_save)
        self.register_load_state_dict_pre_hook(_drop_pending_update_before_load)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Zeroes ``center`` and drops any pending update: call after materialising a meta-device build
        (``to_empty`` leaves the buffer uninitialised)."""
        self._discard_pending_update()
        self.center.zero_()

    def _start_center_update(self, batch_sum: torch.Tensor, n_rows: int) -> None:
        """Records the local sum of this step's statistic and launches its all-reduce (no-op in one process)."""
        if not self.updated:
            # A second update before any use: fold the first one in, so no statistic is ever lost.
            self.apply_center_update()
        self.updated = False
        self.len_teacher_output = n_rows
        self.async_batch_center = batch_sum.to(torch.float32)  # [1, K]
        self.reduce_handle = distributed.all_reduce_async(self.async_batch_center)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Folds the pending batch statistic into ``center`` (waits for its all-reduce). Idempotent."""
        if self.updated:
            return
        if self.reduce_handle is not None:
            self.reduce_handle.wait()
        batch_center = self.async_batch_center / (self.len_teacher_output * distributed.get_global_size())
        m = self.center_momentum
        self.center.copy_(self.center * m + batch_center.to(self.center.device) * (1 - m))
        self._clear_pending()

    def _clear_pending(self) -> None:
        self.updated = True
        self.reduce_handle = None
        self.async_batch_center = None
        self.len_teacher_output = None

    def _discard_pending_update(self) -> None:
        if self.reduce_handle is not None:
            self.reduce_handle.wait()  # every rank launched it; finish it so no collective is left dangling
        self._clear_pending()


def _fold_pending_update_before_save(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    module.apply_center_update()


def _drop_pending_update_before_load(module: nn.Module, *args: object, **kwargs: object) -> None:
    module._discard_pending_update()


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, teacher_temp: float, n_total: int | torch.Tensor, n_iterations: int
) -> torch.Tensor:
    """Sinkhorn-Knopp targets for ``logits`` [R, K] whose rows (samples) are spread over ranks.

    ``n_total`` is the number of rows over all ranks (an int or a 0-d tensor). Global normalisation, then
    ``n_iterations`` times rows to 1/K and columns to 1/n_total (row sums all-reduced), with two numerical guards
    that do not change the result where the plain iteration is finite: the global maximum (all-reduced, so
    identical on every rank) is subtracted before ``exp`` (the first normalisation cancels any global constant),
    and sums are clamped to the smallest normal float so a prototype or sample that underflowed to zero gives zeros
    instead of NaN.
    """
    if teacher_temp <= 0:
        raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
    scaled = logits.to(torch.float32) / teacher_temp  # [R, K]
    local_max = scaled.amax() if scaled.numel() > 0 else scaled.new_tensor(-math.inf)
    global_max = distributed.all_reduce(local_max.clone(), op=torch.distributed.ReduceOp.MAX)
    if not torch.isfinite(global_max):
        global_max = torch.zeros_like(global_max)
    tiny = torch.finfo(torch.float32).tiny
    q = torch.exp(scaled - global_max).t()  # [K, R]
    n_prototypes = q.shape[0]

    total = distributed.all_reduce(q.sum())
    q /= total.clamp_min(tiny)
    for _ in range(n_iterations):
        row_sums = distributed.all_reduce(q.sum(dim=1, keepdim=True))  # [K, 1]
        q /= row_sums.clamp_min(tiny)
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # [1, R]; each column lives on one rank
        q /= n_total
    q *= n_total
    return q.t()  # [R, K]
