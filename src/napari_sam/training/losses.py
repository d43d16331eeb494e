"""SAM's training losses.

Mask loss: focal + dice in the ratio 20:1; IoU head: mean squared error
against the IoU of each predicted mask with the ground truth.  With several
ambiguity outputs only the one with the lowest mask loss is back-propagated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["focal_loss", "dice_loss", "mask_iou", "sam_loss", "FOCAL_WEIGHT", "DICE_WEIGHT"]

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask, averaged over pixels.

    Parameters
    ----------
    logits : (..., H, W) float tensor
    target : (..., H, W) float or bool tensor, same shape
    alpha, gamma : float
        Class balance (negative alpha disables it) and focusing parameter.

    Returns
    -------
    (...,) float tensor
    """
    target = target.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask: ``1 - (2 |p t| + eps) / (|p| + |t| + eps)``.

    Parameters
    ----------
    logits : (..., H, W) float tensor
    target : (..., H, W) float or bool tensor

    Returns
    -------
    (...,) float tensor
    """
    prob = logits.sigmoid().flatten(-2)
    target = target.to(logits.dtype).flatten(-2)
    inter = (prob * target).sum(-1)
    return 1 - (2 * inter + eps) / (prob.sum(-1) + target.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the thresholded masks with the targets (no gradient).

    Parameters
    ----------
    logits : (..., H, W) float tensor
    target : (..., H, W) bool tensor, or float (soft) thresholded at 0.5

    Returns
    -------
    (...,) float tensor in [0, 1]; 1 when both masks are empty.
    """
    with torch.no_grad():
        pred = logits > threshold
        target = target > 0.5 if target.is_floating_point() else target.bool()
        inter = (pred & target).flatten(-2).sum(-1).float()
        union = (pred | target).flatten(-2).sum(-1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    gt: torch.Tensor,
    multimask: torch.Tensor,
    *,
    iou_weight: float = 1.0,
    aux_weight: float = 0.25,
    focal_weight: float = FOCAL_WEIGHT,
) -> dict[str, torch.Tensor]:
    """SAM's loss with the ambiguity-aware output choice.

    Where ``multimask`` (one point, ambiguous) the primary output is the
    ambiguity token (1..M-1) with the lowest mask loss; elsewhere (several
    points, a box) it is the single-output token 0, as in SAM.  The other
    group gets ``aux_weight`` of its loss so that every output the predictor
    can return is trained (SAM leaves it untrained).

    Parameters
    ----------
    logits : (P, M, H, W) float tensor
        Mask logits of all ``M`` decoder tokens at the ground-truth resolution.
    iou_pred : (P, M) float tensor
        Predicted IoU of each token's mask.
    gt : (P, H, W) bool or float (soft, in [0, 1]) tensor
    multimask : (P,) bool tensor
        Whether each prompt is ambiguous (a single point).
    iou_weight, aux_weight : float
        Weights of the IoU-head MSE (all tokens) and of the secondary output group.
    focal_weight : float
        Weight of the focal loss (SAM: 20, with dice weight 1).

    Returns
    -------
    dict
        ``loss`` (scalar to back-propagate), ``mask`` (primary focal + dice),
        ``iou_mse``, ``iou`` (mean true IoU of the primary output),
        ``primary`` ((P,) token index of the primary output).
    """
    target = gt[:, None].expand_as(logits)
    per_mask = focal_weight * focal_loss(logits, target) + DICE_WEIGHT * dice_loss(logits, target)
    true_iou = mask_iou(logits, target)
    rows = torch.arange(logits.shape[0])
    zero = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    best = per_mask[:, 1:].argmin(dim=1) + 1 if logits.shape[1] > 1 else zero
    primary = torch.where(multimask, best, zero)
    secondary = torch.where(multimask, zero, best)
    mask_part = per_mask[rows, primary]
    aux_part = per_mask[rows, secondary]
    iou_mse = F.mse_loss(iou_pred, true_iou, reduction="none").mean(dim=1)
    loss = (mask_part + aux_weight * aux_part + iou_weight * iou_mse).mean()
    return {
        "loss": loss,
        "mask": mask_part.detach().mean(),
        "iou_mse": iou_mse.detach().mean(),
        "iou": true_iou[rows, primary].mean(),
        "primary": primary,
    }
