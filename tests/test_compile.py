"""torch.compile of a training step that calls SSTKDLoss: one graph, no breaks caused by the loss."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from sstkd.distill import SSTKDConfig, SSTKDLoss


def test_a_student_step_with_sstkd_loss_compiles_to_one_graph():
    """fullgraph=True raises on any graph break; "eager" runs what Dynamo captured without
    Inductor's code generation (seconds instead of minutes). Default config, reference backend."""
    torch.manual_seed(0)
    k, cs, ct, h = 3, 2, 3, 16
    crit = SSTKDLoss(cs, ct, k, SSTKDConfig(backend="torch"))
    student, head = nn.Conv2d(3, cs, 3, padding=1), nn.Conv2d(cs, k, 1)
    x, t_log, t_low = torch.randn(1, 3, h, h), torch.randn(1, k, h, h), torch.randn(1, ct, h, h)
    params = list(student.parameters()) + list(head.parameters()) + crit.student_side_parameters()

    def step(x, t_log, t_low):
        low = student(x)
        return crit(head(low), t_log, low, t_low)["loss"]

    def loss_and_grads(fn):
        for p in params:
            p.grad = None
        loss = fn(x, t_log, t_low)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    eager = loss_and_grads(step)
    torch._dynamo.reset()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Dynamo's notes on lru_cache'd filter builders
            compiled = loss_and_grads(torch.compile(step, backend="eager", fullgraph=True))
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled[0], eager[0])
    for g_c, g_e in zip(compiled[1], eager[1]):
        torch.testing.assert_close(g_c, g_e)
