"""Batch normalisation over the global batch of all ranks, on any device and backend.

With per-rank batch statistics, N ranks with batch B do not train the model one rank with
batch N·B would (the statistics, and so the gradients, differ). ``torch.nn.SyncBatchNorm`` fixes
that only on GPUs; this module does it with two small differentiable all-reduces (sum and sum of
squares per channel), so gloo on CPU and NCCL on GPU train the same model. In eval mode it is
plain BatchNorm with the running statistics; the parameters and buffers keep their names, so
checkpoints are interchangeable with the inference model.
"""

from __future__ import annotations

import torch
from torch import nn

from lczscale.train.losses import GlobalSum, local_sum


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are sums over every rank's batch."""

    global_sum: GlobalSum = staticmethod(local_sum)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In training, normalise with statistics summed over every rank's batch; in eval, with the
        running statistics (plain BatchNorm)."""
        if not self.training:
            return super().forward(x)
        n_local = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype,
                               device=x.device)
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n_local])
        stats = type(self).global_sum(stats)
        c = x.shape[1]
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            assert self.running_mean is not None and self.running_var is not None
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp(min=1))
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def use_global_batchnorm(model: nn.Module, global_sum: GlobalSum) -> nn.Module:
    """Swap every BatchNorm2d of ``model`` (in place) for a GlobalBatchNorm2d reducing with
    ``global_sum``; weights and running statistics are kept."""
    cls = type("BoundGlobalBatchNorm2d", (GlobalBatchNorm2d,),
               {"global_sum": staticmethod(global_sum)})
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                new = cls(child.num_features, child.eps, child.momentum, child.affine,
                          child.track_running_stats)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
    return model
