"""FedProx (Li et al. 2020): keep each party's local training near the round's global adapter.

`aggregation.fedprox_mu` μ > 0 adds μ/2·‖θ − θ_global‖², summed over the trainable adapter parameters
only, to every party's local loss. The callback adds that term's gradient, μ(θ − θ_global), to each
trainable parameter's gradient just before the optimizer step (`on_pre_optimizer_step`), once per
optimizer step whatever the gradient accumulation. The Trainer clips gradients (max_grad_norm) before
that hook, so clipping applies to the data loss's gradient only and the proximal pull is exact.
θ_global is the adapter the party started the round from: the assist trainer's initial adapter, then
each round's aggregate (`set_anchor`, called by the round runner).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from transformers import TrainerCallback

from xfed.errors import JobError


class ProximalCallback(TrainerCallback):
    def __init__(self, peft_model: torch.nn.Module, mu: float) -> None:
        self.mu = float(mu)
        self.params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        self.anchor: dict[str, torch.Tensor] = {}

    def set_anchor(self, tensors: Mapping[str, np.ndarray]) -> None:
        if set(tensors) != set(self.params):
            raise JobError("fedprox: the global adapter's tensors differ from the trainable parameters")
        self.anchor = {n: torch.as_tensor(np.asarray(v)).to(self.params[n].device, self.params[n].dtype).clone()
                       for n, v in tensors.items()}

    def add_proximal_gradient(self) -> None:
        """grad += μ(θ − θ_global) for every trainable parameter that has a gradient."""
        if not self.anchor:
            raise JobError("fedprox: no global adapter to stay near (set_anchor was not called)")
        with torch.no_grad():
            for name, p in self.params.items():
                if p.grad is not None:
                    p.grad.add_(p.detach() - self.anchor[name], alpha=self.mu)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.add_proximal_gradient()
        return control
