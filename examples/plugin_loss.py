"""A new contrastive loss as the method ``example_loss``: focal SupCon (AFCL's focal weight with
SupCon's per-anchor averaging, no negative term). Use it with
``asymcl train --plugin examples/plugin_loss.py --set method=example_loss``; see docs/extending.md."""

import asymcl
from asymcl.losses import AsymmetricFocalContrastiveLoss
from asymcl.training.methods import TWO_STAGE


class FocalSupConLoss(AsymmetricFocalContrastiveLoss):
    """(1/N) sum_i -(1/|P(i)|) sum_p (1 - p_ip)^gamma log p_ip; features (N, V, D), labels (N,)."""

    def __init__(self, gamma: float = 2.0, **kwargs):
        super().__init__(gamma, 0.0, normalization="pairs", **kwargs)


def build(loss, gather_distributed):  # loss: the run config's `loss` section
    return FocalSupConLoss(loss.gamma, temperature=loss.temperature, gather_distributed=gather_distributed)


# Kept compact by hand: tests/test_plugins.py holds this worked example under 30 lines.
asymcl.register_method(asymcl.Method(
    "example_loss", "FocalSupCon", TWO_STAGE, "focal SupCon (examples/plugin_loss.py)",
    loss_factory=build, fixed={"eta": 0.0, "normalization": "pairs"}, free=("gamma", "temperature"),
))  # fmt: skip
