"""Exponential moving average of the weights, used for validation and the saved model.

The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the
convention of ``torch_ema``, which mace-torch uses), so early averages are not dominated by the
random initialisation.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for s, p in zip(self.shadow, self.params):
            s.mul_(decay).add_(p.detach(), alpha=1 - decay)

    @contextmanager
    def applied(self):
        """Temporarily swap the averaged weights into the model."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        for s, value in zip(self.shadow, state["shadow"]):
            s.copy_(value)
