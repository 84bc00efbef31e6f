"""SoftPlus surrogate and exact Hessians via torch.func."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from captum_smoothhess.baselines import ExactHessian, exact_hessian, softplus_surrogate


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _Block(), nn.Linear(4, 2), nn.BatchNorm1d(2)).eval()


def test_surrogate_replaces_every_relu_and_leaves_model_untouched() -> None:
    net = _net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    smooth = softplus_surrogate(net, beta=4.0)
    assert not any(isinstance(m, nn.ReLU) for m in smooth.modules())
    assert sum(isinstance(m, nn.Softplus) for m in smooth.modules()) == 2
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 2
    assert smooth.training is False and net.training is False
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])
        assert torch.equal(smooth.state_dict()[k], v)
        assert smooth.state_dict()[k].data_ptr() != v.data_ptr()  # a copy, not shared storage
    x = torch.randn(8, 3)
    with torch.no_grad():
        gap = [float((softplus_surrogate(net, b)(x) - net(x)).abs().max()) for b in (1.0, 10.0, 1000.0)]
    assert gap[0] > gap[1] > gap[2] and gap[2] < 1e-2


def test_surrogate_warns_without_relu_modules_and_rejects_bad_beta() -> None:
    with pytest.warns(UserWarning, match="no nn.ReLU"):
        softplus_surrogate(nn.Linear(2, 2), beta=1.0)
    assert isinstance(softplus_surrogate(nn.ReLU(), beta=2.0), nn.Softplus)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="beta"):
            softplus_surrogate(_net(), beta=bad)
    with pytest.raises(TypeError, match="model"):
        softplus_surrogate(lambda x: x, beta=1.0)  # type: ignore[arg-type]


def _known(x: torch.Tensor) -> torch.Tensor:
    # f = x0^2 x1 + sin(x2) + x0 x2  ->  H = [[2 x1, 2 x0, 1], [2 x0, 0, 0], [1, 0, -sin x2]]
    return x[:, 0] ** 2 * x[:, 1] + torch.sin(x[:, 2]) + x[:, 0] * x[:, 2]


def _known_hessian(x: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(x[:, 0])
    one = torch.ones_like(z)
    return torch.stack(
        [
            torch.stack([2 * x[:, 1], 2 * x[:, 0], one], -1),
            torch.stack([2 * x[:, 0], z, z], -1),
            torch.stack([one, z, -torch.sin(x[:, 2])], -1),
        ],
        -2,
    )


def test_exact_hessian_of_known_function_float64_and_no_grad() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        hess, grad = exact_hessian(_known, x, return_gradient=True)
    torch.testing.assert_close(hess, _known_hessian(x.detach()))
    expected_grad = torch.stack(
        [2 * x[:, 0] * x[:, 1] + x[:, 2], x[:, 0] ** 2, torch.cos(x[:, 2]) + x[:, 0]], 1
    )
    torch.testing.assert_close(grad, expected_grad.detach())
    assert x.requires_grad and x.grad is None
    torch.testing.assert_close(exact_hessian(_known, x, chunk_size=2), hess)


def test_exact_hessian_tuple_inputs_target_and_args() -> None:
    def fwd(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b.reshape(b.shape[0], -1)], 1)
        return torch.stack([_known(x), -_known(x)], 1) * scale

    x = torch.randn(3, 3)
    scale = torch.tensor([[1.0], [2.0], [3.0]])
    blocks = exact_hessian(
        fwd, (x[:, :1], x[:, 1:].reshape(3, 2, 1)), target=[0, 1, 1], additional_forward_args=scale
    )
    assert isinstance(blocks, tuple) and blocks[0][1].shape == (3, 1, 2, 1)
    assert blocks[1][1].shape == (3, 2, 1, 2, 1)
    full = torch.cat(
        [
            torch.cat([blocks[0][0].reshape(3, 1, 1), blocks[0][1].reshape(3, 1, 2)], 2),
            torch.cat([blocks[1][0].reshape(3, 2, 1), blocks[1][1].reshape(3, 2, 2)], 2),
        ],
        1,
    )
    sign = torch.tensor([1.0, -1.0, -1.0]) * scale[:, 0]
    torch.testing.assert_close(full, sign[:, None, None] * _known_hessian(x))


def test_exact_hessian_class_on_softplus_network_matches_autograd() -> None:
    smooth = softplus_surrogate(_net(), beta=3.0)
    x = torch.randn(5, 3, dtype=torch.float64)
    smooth = smooth.double()
    hess = ExactHessian(smooth).attribute(x, target=1)
    hess_fn = torch.autograd.functional.hessian
    ref = torch.stack([hess_fn(lambda z: smooth(z[None])[0, 1], x[i]) for i in range(5)])
    torch.testing.assert_close(hess, ref)
    assert float(hess.abs().max()) > 0


def test_exact_hessian_bad_arguments() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="target"):
        exact_hessian(lambda z: torch.stack([_known(z)] * 2, 1), x)
    with pytest.raises(ValueError, match="target"):
        exact_hessian(lambda z: torch.stack([_known(z)] * 2, 1), x, target=5)
    with pytest.raises(ValueError, match="chunk_size"):
        exact_hessian(_known, x, chunk_size=0)
    with pytest.raises(ValueError, match="inputs"):
        exact_hessian(_known, torch.full((2, 3), math.nan))


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Softplus(), nn.Linear(8, 3)).double().train()


_TRAINING_WARNING = r"in training mode normalise\(s\) with the statistics of each batch"


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("exact_hessian: 1", lambda m, x: exact_hessian(m, x, target=0, return_gradient=True)),
        ("ExactHessian: 1", lambda m, x: ExactHessian(m).attribute(x, target=0, return_gradient=True)),
        ("exact_hessian: 1", lambda m, x: exact_hessian(m.forward, x, target=0, return_gradient=True)),
    ],
)
def test_exact_hessian_training_mode_batch_norm_warns_leaves_buffers_and_is_exact(
    name: str, call: object
) -> None:
    """Derivatives of the training-mode function (batch statistics) on a private copy; buffers as found."""
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=name + " " + _TRAINING_WARNING):
        hess, grad = call(net, x)  # type: ignore[operator]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert net.training and net[1].training
    assert all(p.grad is None for p in net.parameters())

    # Reference: autograd on the batch sum of the training-mode outputs (batch norm
    # without running statistics computes the same outputs), with one direction
    # shared by all examples, as exact_hessian documents.
    ref_net = _bn_net()
    ref_net[1].track_running_stats = False
    ref_net[1].running_mean = ref_net[1].running_var = ref_net[1].num_batches_tracked = None
    torch.testing.assert_close(ref_net(x), _bn_net()(x))

    def total(flat: torch.Tensor) -> torch.Tensor:
        return ref_net(flat.reshape(4, 5))[:, 0].sum()

    full = torch.autograd.functional.hessian(total, x.reshape(-1)).reshape(4, 5, 4, 5).sum(2)
    torch.testing.assert_close(hess, 0.5 * (full + full.transpose(1, 2)))
    ref_grad = torch.autograd.functional.jacobian(total, x.reshape(-1)).reshape(4, 5)
    torch.testing.assert_close(grad, ref_grad)


def test_exact_hessian_through_class_probability_on_training_mode_batch_norm() -> None:
    from captum_smoothhess.robust import ClassProbability

    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="ExactHessian: model.1 " + _TRAINING_WARNING):
        hess = ExactHessian(ClassProbability(net)).attribute(x, target=1)
    assert hess.shape == (4, 5, 5) and bool(torch.isfinite(hess).all())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert net.training


def test_surrogate_replaces_a_relu_instance_shared_by_several_slots() -> None:
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(3, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 2))
    smooth = softplus_surrogate(net, beta=2.0)
    assert isinstance(smooth[1], nn.Softplus) and isinstance(smooth[3], nn.Softplus)
    assert net[1] is relu and net[3] is relu


def test_exact_hessian_refuses_nan_or_inf_outputs_and_derivatives() -> None:
    with pytest.raises(ValueError, match="forward_func"):
        exact_hessian(lambda z: z.log().sum(1), -torch.ones(2, 2))  # NaN output, finite "Hessian"
    with pytest.raises(ValueError, match="forward_func"):
        exact_hessian(lambda z: z.abs().sqrt().sum(1), torch.zeros(2, 2))  # Inf gradient at 0
    hess, grad = exact_hessian(lambda z: z.new_ones(z.shape[0]), torch.ones(2, 3), return_gradient=True)
    assert not bool(hess.any()) and not bool(grad.any())  # constant: derivatives are 0


def test_exact_hessian_of_a_model_with_dropout_in_training_mode() -> None:
    """One forward pass, one dropout mask: the Hessian is that of one thinned network, for any chunk."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3), nn.Softplus(), nn.Dropout(0.5), nn.Linear(3, 3)).double().train()
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for chunk in (None, 2):
        with pytest.warns(RuntimeWarning, match="drop"):
            hess, grad = exact_hessian(net, x, target=0, return_gradient=True, chunk_size=chunk)
        assert hess.shape == (4, 5, 5) and bool(torch.isfinite(hess).all())
        assert net.training and net[2].training
        # The thinned network is Linear -> Softplus -> mask -> Linear: its Hessian is W1^T diag(c) W1.
        # The mask is whatever was drawn; it must be one mask for every row of H and for g.
        w1, w2 = net[0].weight.detach(), net[3].weight[0].detach()
        sig = torch.sigmoid(x @ w1.T + net[0].bias.detach())
        # g = W1^T (m * w2 * sig), m in {0, 2} per example and unit (W1^T has full column rank):
        # recover the mask from g, and check H with it.
        coef = torch.linalg.lstsq(w1.T.expand(4, 5, 3), grad[:, :, None]).solution[:, :, 0]
        mask = (coef / (w2 * sig)).round()
        assert bool(((mask == 0) | (mask == 2)).all())
        expect = torch.einsum("ki,bk,kj->bij", w1, mask * w2 * sig * (1 - sig), w1)
        torch.testing.assert_close(hess, expect)


def test_exact_hessian_from_several_threads_at_once() -> None:
    """No process-wide forward-mode AD levels: concurrent calls on one model give each the right answer."""
    import threading

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Softplus(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = exact_hessian(net, x, target=1)
    errors: list = []

    def work() -> None:
        try:
            for _ in range(10):
                torch.testing.assert_close(exact_hessian(net, x, target=1), ref)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]
