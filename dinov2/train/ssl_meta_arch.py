"""The DINOv2 self-supervised meta-architecture: student and EMA teacher (backbone + DINO head [+ iBOT head]) and
the three losses (DINO on CLS tokens, iBOT on masked patch tokens, KoLeo on the student's CLS tokens).

Loss formulas, crop routing and normalisations are kept as in the official DINOv2 code so that its recipes optimise
the same objective (README lists what changed around them): the teacher sees the two global crops, the student sees
global crops (masked for iBOT) and local crops, and the DINO loss averages over all ``2 + 2 * n_local`` pairs of
different views.
"""

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from dinov2 import distributed
from dinov2.errors import ConfigError
from dinov2.fsdp import (
    ShardedGradScaler,
    autocast_context,
    get_fsdp_wrapper,
    get_sharding_options,
    reshard_fsdp_model,
)
from dinov2.layers import DINOHead
from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss
from dinov2.models import build_model, build_model_from_cfg
from dinov2.models.checkpoint_filter import checkpoint_filter_fn, strip_prefixes
from dinov2.models.vision_transformer import BlockChunk
from dinov2.models.weights import load_pretrained_weights, load_state_dict_from_url_or_path
from dinov2.train.collapse_monitor import teacher_statistics
from dinov2.utils.dtype import as_torch_dtype
from dinov2.utils.param_groups import fuse_params_groups, get_params_groups_with_decay
from dinov2.utils.utils import has_batchnorms

__all__ = ["SSLMetaArch"]

logger = logging.getLogger("dinov2")

_CENTERINGS = ("centering", "sinkhorn_knopp")
_N_GLOBAL_CROPS = 2


@dataclass
class _TeacherTargets:
    """Teacher probabilities: ``dino`` [2, B, K] (crop order swapped) and ``ibot`` [M, K]; None when disabled."""

    dino: Tensor | None
    ibot: Tensor | None


@dataclass
class _StudentOutputs:
    """Student logits and backbone features needed by the losses."""

    local_logits: Tensor | None  # [n_l*B, K]
    global_logits: Tensor | None  # [2B, K]
    global_cls: Tensor  # [2B, D] backbone CLS (KoLeo)
    patch_logits: Tensor | None  # [M, K]


def _local(tensor: Tensor) -> Tensor:
    """This rank's part of a (possibly FSDP-sharded DTensor) parameter, as a plain tensor sharing its storage."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class SSLMetaArch(nn.Module):
    """``SSLMetaArch(cfg)``: ``student`` and ``teacher`` ModuleDicts (``backbone``, ``dino_head``, ``ibot_head``
    with ``ibot.separate_head``) and the losses as submodules, so the state dict holds ``student.*``, ``teacher.*``,
    ``dino_loss.center`` and ``ibot_patch_loss.center``, the keys of the official DINOv2 training checkpoints.

    The model is built on ``dinov2.distributed.get_device()``. The teacher starts as a copy of the student (which
    holds ``student.pretrained_weights`` when set). Call :meth:`prepare_for_distributed_training` before training.
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.device = distributed.get_device()
        if cfg.train.centering not in _CENTERINGS:
            raise ConfigError(f"train.centering={cfg.train.centering!r} is not supported; use one of {_CENTERINGS}")
        self.centering = cfg.train.centering
        self.do_dino = cfg.dino.loss_weight > 0
        self.do_koleo = cfg.dino.koleo_loss_weight > 0
        self.do_ibot = cfg.ibot.loss_weight > 0
        self.ibot_separate_head = bool(cfg.ibot.separate_head)
        if not (self.do_dino or self.do_ibot):
            raise ConfigError("dino.loss_weight and ibot.loss_weight are both 0: enable at least one loss")
        if self.do_koleo and not self.do_dino:
            raise ConfigError("dino.koleo_loss_weight > 0 needs the DINO loss (dino.loss_weight > 0)")
        self.n_local_crops = int(cfg.crops.local_crops_number)
        # Collapse statistics of the latest teacher pass (see dinov2.train.collapse_monitor); empty without DINO.
        self.teacher_stats: dict[str, Tensor] = {}

        student_backbone, teacher_backbone, embed_dim = build_model_from_cfg(cfg)
        self.embed_dim = embed_dim
        student: dict[str, nn.Module] = {"backbone": student_backbone}
        teacher: dict[str, nn.Module] = {"backbone": teacher_backbone}
        # The DINO head also serves iBOT unless ibot.separate_head; with DINO off the shared head is still built
        # from the dino.* keys.
        if self.do_dino or (self.do_ibot and not self.ibot_separate_head):
            student["dino_head"], teacher["dino_head"] = self._make_head(cfg.dino), self._make_head(cfg.dino)
        if self.do_dino:
            self.dino_loss = DINOLoss(cfg.dino.head_n_prototypes)
            if self.do_koleo:
                self.koleo_loss = KoLeoLoss()
        if self.do_ibot:
            if max(cfg.ibot.mask_ratio_min_max) <= 0 or cfg.ibot.mask_sample_probability <= 0:
                raise ConfigError(
                    "the iBOT loss needs masked tokens: set ibot.mask_ratio_min_max (max > 0) and "
                    "ibot.mask_sample_probability > 0, or disable it with ibot.loss_weight=0"
                )
            ibot_cfg = cfg.ibot if self.ibot_separate_head else cfg.dino
            self.ibot_patch_loss = iBOTPatchLoss(ibot_cfg.head_n_prototypes)
            if self.ibot_separate_head:
                student["ibot_head"], teacher["ibot_head"] = self._make_head(cfg.ibot), self._make_head(cfg.ibot)
        self.student = nn.ModuleDict(student)
        self.teacher = nn.ModuleDict(teacher)
        if cfg.student.pretrained_weights:
            # Continued pretraining: the backbone weights go into the student, then into the teacher below.
            self._load_pretrained_backbone(cfg.student.pretrained_weights)
        self.teacher.load_state_dict(self.student.state_dict())
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.to(self.device)

        self.fp16_scaler = self._make_grad_scaler()
        self._student_autocast_dtype = self._param_dtype("student", "backbone")
        self._teacher_autocast_dtype = self._param_dtype("teacher", "backbone")
        logger.info("OPTIONS -- architecture : embed_dim: %d, student parts: %s", embed_dim, list(self.student))

    # -- construction helpers -------------------------------------------------------------------------------------

    def _make_head(self, head_cfg: DictConfig) -> DINOHead:
        return DINOHead(
            in_dim=self.embed_dim,
            out_dim=head_cfg.head_n_prototypes,
            hidden_dim=head_cfg.head_hidden_dim,
            bottleneck_dim=head_cfg.head_bottleneck_dim,
            nlayers=head_cfg.head_nlayers,
        )

    @torch.no_grad()
    def _load_pretrained_backbone(self, path: str) -> None:
        """Loads backbone weights (a hub/released file, or a ``teacher_checkpoint.pth``) strictly into the student.
        A position embedding made for another resolution (the released weights: 518 px, 37 x 37 patches) is
        resampled to this model's grid with the model's own interpolation, as it would be at inference."""
        checkpoint = load_state_dict_from_url_or_path(path)  # read once
        state = strip_prefixes(checkpoint.get("teacher", checkpoint))
        backbone = self.student.backbone
        if "pos_embed" not in state or state["pos_embed"].shape == backbone.pos_embed.shape:
            load_pretrained_weights(backbone, checkpoint, checkpoint_key="teacher", name=path)
            return
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)  # rows: CLS + grid^2 patches
        source, _ = build_model(self.cfg.student, only_teacher=True, img_size=grid * backbone.patch_size)
        load_pretrained_weights(source, checkpoint, checkpoint_key="teacher", name=path)
        size = self.cfg.crops.global_crops_size
        tokens = backbone.pos_embed.new_zeros(backbone.pos_embed.shape)  # [1, 1+N, D]
        weights = source.state_dict()
        weights["pos_embed"] = source.interpolate_pos_encoding(tokens, size, size)  # [1, 1+N, D]
        backbone.load_state_dict(checkpoint_filter_fn(weights, backbone))
        logger.info("resampled pos_embed of %s from a %dx%d grid to the training resolution %d", path, grid, grid, size)

    def _param_dtype(self, model: str, part: str) -> torch.dtype:
        return as_torch_dtype(self.cfg.compute_precision[model][part].mixed_precision.param_dtype)

    def _make_grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler only where it helps: ``compute_precision.grad_scaler`` and some student part in fp16."""
        uses_fp16 = any(self._param_dtype("student", part) == torch.float16 for part in self.student)
        if not self.cfg.compute_precision.grad_scaler:
            return None
        if not uses_fp16:
            logger.info("compute_precision.grad_scaler is set but no student part computes in fp16: no loss scaling")
            return None
        if distributed.is_enabled():
            return ShardedGradScaler()
        return torch.amp.GradScaler(self.device.type)

    def forward(self, inputs: Any) -> None:
        raise NotImplementedError("SSLMetaArch is trained through forward_backward(images, teacher_temp)")

    def train(self, mode: bool = True) -> "SSLMetaArch":
        """As ``nn.Module.train``, but the teacher always stays in eval mode (no stochastic depth)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # -- distributed setup ----------------------------------------------------------------------------------------

    def prepare_for_distributed_training(self) -> None:
        """Shards every student and teacher part with FSDP2 (one unit per block, or per chunk with
        ``student.block_chunks``) as ``compute_precision`` says; optionally compiles the backbones. In a single
        process nothing is sharded and mixed precision comes from autocast instead."""
        if has_batchnorms(self.student):
            raise ValueError("BatchNorm layers are not supported (their statistics would differ between ranks)")
        # The backbone's forward_features returns slices of its normed tokens (x_norm_clstoken etc., which are
        # views). FSDP2 warns about views because an in-place op on one would skip its backward hook; this class
        # only reads them (out-of-place cat/index), and tests/train/test_train_distributed.py::
        # test_sharded_step_matches_the_replicated_step checks losses, gradients and weights of every strategy.
        warnings.filterwarnings(
            "ignore", message=r"FSDP2-wrapped module \(FSDPDinoVisionTransformer\) returned a view tensor"
        )
        self._broadcast_states_from_rank_0()
        for part in self.student:
            student_cfg = self.cfg.compute_precision.student[part]
            teacher_cfg = self.cfg.compute_precision.teacher[part]
            student_replicated = get_sharding_options(student_cfg.sharding_strategy).replicate
            if (
                distributed.is_enabled()
                and student_replicated != get_sharding_options(teacher_cfg.sharding_strategy).replicate
            ):
                raise ConfigError(
                    f"compute_precision.student.{part}.sharding_strategy ({student_cfg.sharding_strategy}) and "
                    f"compute_precision.teacher.{part}.sharding_strategy ({teacher_cfg.sharding_strategy}) must both "
                    "be NO_SHARD or both sharded: the teacher EMA pairs the two models' local shards"
                )
            wrap_types = self._fsdp_unit_types(self.student[part])
            self.student[part] = get_fsdp_wrapper(student_cfg, modules_to_wrap=wrap_types)(self.student[part])
            self.teacher[part] = get_fsdp_wrapper(teacher_cfg, modules_to_wrap=wrap_types)(self.teacher[part])
        if self.cfg.train.compile:
            self.student.backbone.compile()
            self.teacher.backbone.compile()

    @torch.no_grad()
    def _broadcast_states_from_rank_0(self) -> None:
        """Every rank starts from rank 0's weights (FSDP1's ``sync_module_states``): ranks seed their RNGs with
        ``train.seed + rank``, so their random inits differ, and replicated (``NO_SHARD``) parts would otherwise
        keep different replicas for the whole run."""
        if not distributed.is_enabled():
            return
        for tensor in [*self.parameters(), *self.buffers()]:
            distributed.broadcast(tensor.data, src=0)

    @staticmethod
    def _fsdp_unit_types(module: nn.Module) -> set[type[nn.Module]]:
        """The block class (or BlockChunk) that becomes one FSDP unit; heads have none."""
        blocks = getattr(module, "blocks", None)
        if blocks is None or len(blocks) == 0:
            return set()
        return {BlockChunk} if getattr(module, "chunked_blocks", False) else {type(blocks[0])}

    def teacher_autocast(self) -> contextlib.AbstractContextManager:
        """The precision context the teacher trains in (for evaluating it during training)."""
        return self._autocast(self._teacher_autocast_dtype)

    def _autocast(self, dtype: torch.dtype) -> contextlib.AbstractContextManager:
        """Autocast for a single process; under FSDP the MixedPrecisionPolicy casts instead."""
        if distributed.is_enabled():
            return contextlib.nullcontext()
        return autocast_context(self.device, dtype)

    # -- training step --------------------------------------------------------------------------------------------

    def forward_backward(self, images: dict[str, Any], teacher_temp: float) -> dict[str, Tensor]:
        """One forward and backward pass on a collated batch; returns the detached loss terms.

        Keys (those enabled): ``dino_local_crops_loss``, ``dino_global_crops_loss``, ``koleo_loss``, ``ibot_loss``.
        Each value is the term as it enters the optimised objective (weight included), so their sum is that
        objective.
        """
        batch = self._batch_to_device(images)
        targets = self.get_teacher_output(batch, teacher_temp)
        reshard_fsdp_model(self.teacher)  # the teacher runs no backward: free its gathered parameters now
        outputs = self.get_student_output(batch)
        loss_dict = self.compute_losses(batch, targets, outputs)
        loss = torch.stack(list(loss_dict.values())).sum()
        if self.fp16_scaler is not None:
            self.fp16_scaler.scale(loss).backward()
        else:
            loss.backward()
        return {name: value.detach() for name, value in loss_dict.items()}

    def _batch_to_device(self, images: dict[str, Any]) -> dict[str, Any]:
        n_global = images["collated_global_crops"].shape[0]
        if n_global % _N_GLOBAL_CROPS:
            raise ValueError(f"collated_global_crops holds {n_global} crops, not 2 per image")
        return {
            key: value.to(self.device, non_blocking=True) if isinstance(value, Tensor) else value
            for key, value in images.items()
        }

    @torch.no_grad()
    def get_teacher_output(self, batch: dict[str, Any], teacher_temp: float) -> _TeacherTargets:
        """Teacher targets from the global crops: DINO targets of the CLS tokens (the two crops swapped, so that
        student crop 1 is paired with teacher crop 2) and iBOT targets of the patch tokens the student sees masked."""
        global_crops = batch["collated_global_crops"]  # [2B, 3, G, G]
        with self._autocast(self._teacher_autocast_dtype):
            out = self.teacher.backbone(global_crops, is_training=True)
            cls = out["x_norm_clstoken"]  # [2B, D]
            cls = torch.cat(cls.chunk(_N_GLOBAL_CROPS)[::-1])  # [2B, D], crop 2 first
            cls_logits = patch_logits = None
            if self.do_ibot:
                patches = out["x_norm_patchtokens"].flatten(0, 1)[batch["mask_indices_list"]]  # [M, D]
            if self.do_ibot and not self.ibot_separate_head:
                logits = self.teacher.dino_head(torch.cat((cls, patches)))  # [2B+M, K]
                cls_logits, patch_logits = logits[: cls.shape[0]], logits[cls.shape[0] :]
                cls_logits = cls_logits if self.do_dino else None
            else:
                cls_logits = self.teacher.dino_head(cls) if self.do_dino else None  # [2B, K]
                patch_logits = self.teacher.ibot_head(patches) if self.do_ibot else None  # [M, K]
        dino_targets = self._dino_targets(cls_logits, teacher_temp) if cls_logits is not None else None
        if dino_targets is not None:
            center = self.dino_loss.center if self.centering == "centering" else None
            self.teacher_stats = teacher_statistics(cls, cls_logits, dino_targets.flatten(0, 1), center)
        ibot_targets = self._ibot_targets(patch_logits, teacher_temp, batch) if patch_logits is not None else None
        return _TeacherTargets(dino=dino_targets, ibot=ibot_targets)

    def _dino_targets(self, cls_logits: Tensor, teacher_temp: float) -> Tensor:
        if self.centering == "centering":
            targets = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)  # [2B, K]
            self.dino_loss.update_center(cls_logits)
        else:
            targets = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp)  # [2B, K]
        return targets.view(_N_GLOBAL_CROPS, -1, targets.shape[-1])  # [2, B, K]

    def _ibot_targets(self, patch_logits: Tensor, teacher_temp: float, batch: dict[str, Any]) -> Tensor:
        if self.centering == "centering":
            logits = patch_logits.unsqueeze(0)  # [1, M, K]
            targets = self.ibot_patch_loss.softmax_center_teacher(logits, teacher_temp).squeeze(0)  # [M, K]
            if logits.shape[1] == 0:
                # No masked token here (tiny grids or batches): the mean over none would put NaN into the center;
                # this rank votes for the current center instead.
                logits = self.ibot_patch_loss.center.clone()  # [1, 1, K]
            self.ibot_patch_loss.update_center(logits)
            return targets
        return self.ibot_patch_loss.sinkhorn_knopp_teacher(
            patch_logits, teacher_temp, n_masked_patches_tensor=batch["n_masked_patches"]
        )  # [M, K]

    def get_student_output(self, batch: dict[str, Any]) -> _StudentOutputs:
        """Student pass over global crops (masked) and local crops, then the heads on the tokens the losses use."""
        global_crops = batch["collated_global_crops"]  # [2B, 3, G, G]
        masks = batch["collated_masks"] if self.do_ibot else None  # [2B, N]
        with self._autocast(self._student_autocast_dtype):
            if self.n_local_crops > 0:
                crops, crop_masks = [global_crops, batch["collated_local_crops"]], [masks, None]
                global_out, local_out = self.student.backbone(crops, masks=crop_masks, is_training=True)
            else:
                global_out, local_out = self.student.backbone(global_crops, masks=masks, is_training=True), None
            global_cls = global_out["x_norm_clstoken"]  # [2B, D]
            local_cls = local_out["x_norm_clstoken"] if local_out is not None else global_cls[:0]  # [n_l*B, D]
            patches = None
            if self.do_ibot:
                patches = global_out["x_norm_patchtokens"].flatten(0, 1)[batch["mask_indices_list"]]  # [M, D]
            head_inputs = [local_cls, global_cls] if self.do_dino else []
            if self.do_ibot and not self.ibot_separate_head:
                head_inputs.append(patches)
            # The heads act per token, so one call on the concatenation equals separate calls (fewer launches).
            sizes = [tensor.shape[0] for tensor in head_inputs]
            logits = self.student.dino_head(torch.cat(head_inputs)).split(sizes) if head_inputs else []  # [*, K]
            if self.do_ibot and self.ibot_separate_head:
                logits = [*logits, self.student.ibot_head(patches)]  # [M, K]
        local_logits, global_logits = (logits[0], logits[1]) if self.do_dino else (None, None)
        return _StudentOutputs(
            local_logits=local_logits,
            global_logits=global_logits,
            global_cls=global_cls,
            patch_logits=logits[-1] if self.do_ibot else None,
        )

    def compute_losses(
        self, batch: dict[str, Any], targets: _TeacherTargets, outputs: _StudentOutputs
    ) -> dict[str, Tensor]:
        """The weighted loss terms. DINO: the sum over the pairs of different views divided by
        ``max(2 * n_local, 1) + 2`` (3 without local crops, where there are 2 pairs: kept from the official DINOv2
        code so that loss values and the effective DINO weight match its runs)."""
        n_terms = max(2 * self.n_local_crops, 1) + _N_GLOBAL_CROPS
        losses: dict[str, Tensor] = {}
        if self.do_dino:
            weight = self.cfg.dino.loss_weight
            teacher_rows = list(targets.dino)  # 2 x [B, K]
            if self.n_local_crops > 0:
                local_chunks = list(outputs.local_logits.chunk(self.n_local_crops))  # n_l x [B, K]
                losses["dino_local_crops_loss"] = weight * self.dino_loss(local_chunks, teacher_rows) / n_terms
            global_loss = self.dino_loss([outputs.global_logits], [targets.dino.flatten(0, 1)])
            losses["dino_global_crops_loss"] = weight * global_loss * 2 / n_terms
        if self.do_koleo:
            koleo = sum(self.koleo_loss(cls) for cls in outputs.global_cls.chunk(_N_GLOBAL_CROPS))
            losses["koleo_loss"] = self.cfg.dino.koleo_loss_weight * koleo
        if self.do_ibot:
            ibot = self.ibot_patch_loss.forward_masked(
                outputs.patch_logits,
                targets.ibot,
                student_masks_flat=batch["collated_masks"],
                n_masked_patches=int(batch["mask_indices_list"].shape[0]),
                masks_weight=batch["masks_weight"],
            )
            losses["ibot_loss"] = self.cfg.ibot.loss_weight * ibot
        return losses

    # -- optimisation helpers -------------------------------------------------------------------------------------

    def get_params_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups of every student part: layer-wise lr decay, patch-embed lr multiplier, no weight decay
        on biases/norms/LayerScale, ``is_last_layer`` for the heads' last layer."""
        groups = []
        for part in self.student.values():
            per_param = get_params_groups_with_decay(
                part,
                lr_decay_rate=self.cfg.optim.layerwise_decay,
                patch_embed_lr_mult=self.cfg.optim.patch_embed_lr_mult,
            )
            groups += fuse_params_groups(per_param)
        return groups

    def clip_grad_norm_(self, max_norm: float) -> dict[str, float]:
        """Clips the gradients of each student part separately to ``max_norm``, so one part's large gradients do
        not shrink the others'; returns each part's norm before clipping (sharded gradients give the global norm)."""
        norms = {}
        for name, part in self.student.items():
            norm = torch.nn.utils.clip_grad_norm_(part.parameters(), max_norm)
            norms[name] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return {name: float(norm) for name, norm in norms.items()}

    @torch.no_grad()
    def update_teacher(self, m: float) -> None:
        """``teacher = m * teacher + (1 - m) * student`` for every parameter, matched by name (buffers untouched)."""
        student_params, teacher_params = [], []
        for part in self.student:
            student_named = dict(self.student[part].named_parameters())
            for name, teacher_param in self.teacher[part].named_parameters():
                student_params.append(_local(student_named[name]))
                teacher_params.append(_local(teacher_param))
        torch._foreach_mul_(teacher_params, m)
        torch._foreach_add_(teacher_params, student_params, alpha=1 - m)
