"""The AC-GAN objectives and the recipe's variations of them.

The paper: D maximises L_S + L_C, G maximises L_C - L_S, with

    L_S = E[log P(S=real | x_real)] + E[log P(S=fake | x_fake)]
    L_C = E[log P(C=c | x_real)] + E[log P(C=c | x_fake)]

Here every function returns minimisation targets ``(total, source part, class part)`` and
takes *logits* (never probabilities: a softmax before cross-entropy bounds the loss).

Variations (``train.*`` keys):

- ``loss``: ``bce`` (the paper's log-likelihood; G uses the non-saturating form, fakes
  labelled real, as the paper's reference code and DCGAN do) or ``hinge`` (Lim & Ye 2017;
  Miyato et al. 2018): D minimises ``relu(1 - s_real) + relu(1 + s_fake)``, G ``-s_fake``.
- ``fake_class_loss``: with ``false`` D's class head learns from real images only (the
  "ACGAN-Mod" change; a D rewarded for classifying G's early blobs teaches G to draw
  whatever is easiest to classify, not the class).
- ``class_weight``: the weight of the class terms in both players' losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("bce", "hinge")


def _source_d(src_real: Tensor, src_fake: Tensor, loss: str) -> Tensor:
    if loss == "hinge":
        return F.relu(1.0 - src_real).mean() + F.relu(1.0 + src_fake).mean()
    ones, zeros = torch.ones_like(src_real), torch.zeros_like(src_fake)
    return F.binary_cross_entropy_with_logits(src_real, ones) + F.binary_cross_entropy_with_logits(
        src_fake, zeros
    )


def d_loss(
    src_real: Tensor,
    cls_real: Tensor,
    y_real: Tensor,
    src_fake: Tensor,
    cls_fake: Tensor,
    y_fake: Tensor,
    *,
    loss: str = "bce",
    fake_class_loss: bool = True,
    class_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """D's objective: returns ``(loss, source part, class part)`` (class part unweighted)."""
    ls = _source_d(src_real, src_fake, loss)
    lc = F.cross_entropy(cls_real, y_real)
    if fake_class_loss:
        lc = lc + F.cross_entropy(cls_fake, y_fake)
    return ls + class_weight * lc, ls, lc


def g_loss(
    src_fake: Tensor,
    cls_fake: Tensor,
    y_fake: Tensor,
    *,
    loss: str = "bce",
    class_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """G's objective: returns ``(loss, source part, class part)`` (class part unweighted)."""
    if loss == "hinge":
        ls = -src_fake.mean()
    else:
        ls = F.binary_cross_entropy_with_logits(src_fake, torch.ones_like(src_fake))
    lc = F.cross_entropy(cls_fake, y_fake)
    return ls + class_weight * lc, ls, lc
