"""FedProx: the callback's gradient is the gradient of loss + mu/2 ||theta - theta_global||^2 (trainable only)."""
import numpy as np
import torch

from xfed.operators.horizontal_chatglm.fedprox import ProximalCallback


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)  # a frozen base weight: no proximal term
    return model


def test_proximal_gradient_equals_autograd_of_the_proximal_loss():
    mu = 0.3
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    model = _model()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    anchor = {n: p.detach().numpy() + np.float32(0.5) * np.sign(p.detach().numpy() + 1e-3) for n, p in trainable.items()}
    with torch.no_grad():  # theta is away from theta_global, so the term matters
        for p in trainable.values():
            p.add_(0.1)

    callback = ProximalCallback(model, mu)
    callback.set_anchor(anchor)
    torch.nn.functional.mse_loss(model(x), y).backward()
    callback.add_proximal_gradient()
    got = {n: p.grad.clone() for n, p in trainable.items()}

    reference = _model()
    with torch.no_grad():
        for p in reference.parameters():
            if p.requires_grad:
                p.add_(0.1)
    ref_params = dict(reference.named_parameters())
    loss = torch.nn.functional.mse_loss(reference(x), y) + mu / 2 * sum(
        ((ref_params[n] - torch.from_numpy(a)) ** 2).sum() for n, a in anchor.items())
    loss.backward()
    assert set(got) == {"0.bias", "1.weight", "1.bias"}
    for n in got:
        torch.testing.assert_close(got[n], ref_params[n].grad)
    assert model[0].weight.grad is None


def test_at_the_anchor_the_term_adds_nothing():
    model = _model()
    callback = ProximalCallback(model, 5.0)
    callback.set_anchor({n: p.detach().numpy().copy() for n, p in model.named_parameters() if p.requires_grad})
    model(torch.randn(2, 4)).sum().backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    callback.add_proximal_gradient()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, before[n])
