"""Adam with the paper's warmup / inverse-square-root learning rate (§5.3)."""
from __future__ import annotations

import torch

from .config import TrainConfig


def learning_rate(step: int, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    """lrate = d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5)   (§5.3, eq. 3)

    Rises linearly for `warmup_steps` steps, peaks at step = warmup_steps, then decays as 1/√step. Step counts
    from 1 (the first update); step 0 gives 0.
    """
    if step <= 0:
        return 0.0
    return scale * d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, d_model: int) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam(β1 = 0.9, β2 = 0.98, ε = 1e-9) and a LambdaLR that applies eq. 3 (base lr 1, so lr = eq. 3)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    # LambdaLR calls the lambda with the number of scheduler.step() calls so far; the update about to happen is
    # number (that + 1).
    if not cfg.reset_optimizer:
        rate = lambda n: learning_rate(n + 1, d_model, cfg.warmup_steps, cfg.lr_scale)  # noqa: E731
    else:  # a continuation with a fresh Adam: eq. 3 at the step reached, approached linearly over rewarmup_steps
        rate = lambda n: (min(1.0, (n + 1) / cfg.rewarmup_steps)  # noqa: E731
                          * learning_rate(cfg.init_step + n + 1, d_model, cfg.warmup_steps, cfg.lr_scale))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
