"""A model that a function hides from the package: its training-mode batch norm is refused, never updated.

The methods copy a model privately when its forward updates buffers (batch norm in training mode); a
model reached through a function, a lambda or a callable stored outside the module registry cannot be
copied, so every call runs it guarded (``_model.guarded``): such a layer raises before it changes
anything. The attribution classes are covered by ``test_contract``; here the functions and the attack,
and what the guard must leave alone.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import pytest
import torch
from helpers import gen
from torch import Tensor, nn

from captum_smoothhess import SmoothHess
from captum_smoothhess._model import guarded, hides_models
from captum_smoothhess.baselines import ExactHessian, exact_hessian
from captum_smoothhess.metrics import perturbation_mse
from captum_smoothhess.robust import ClassProbability, SecondOrderAttack

_REFUSED = r"^forward_func: it runs a BatchNorm1d in training mode"


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Softplus(), nn.Linear(6, 3)).double().train()


def _state(net: nn.Module) -> Dict[str, Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(net: nn.Module, before: Dict[str, Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _x() -> Tensor:
    return torch.randn(4, 4, generator=gen(1), dtype=torch.float64)


class _Holder(nn.Module):
    """A module that calls a model stored outside its registry (a plain attribute, not a submodule)."""

    def __init__(self, model: Callable[..., Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


CALLS = {
    "exact_hessian": lambda f, x: exact_hessian(f, x, target=0),
    "ExactHessian": lambda f, x: ExactHessian(f).attribute(x, target=0),
    "perturbation_mse": lambda f, x: perturbation_mse(
        f, x, torch.zeros_like(x), target=0, n_perturbations=8, generator=gen(0)
    ),
    "SecondOrderAttack": lambda f, x: SecondOrderAttack(f).perturb(
        x, radius=0.1, n_samples=8, stdevs=0.1, generator=gen(0)
    ),
    "SecondOrderAttack-target": lambda f, x: SecondOrderAttack(f).perturb(
        x, radius=0.1, target=0, n_samples=8, stdevs=0.1, generator=gen(0)
    ),
    "SecondOrderAttack-exact": lambda f, x: SecondOrderAttack(
        f, source=ExactHessian(ClassProbability(f))
    ).perturb(x, radius=0.1, order=1),
    "SmoothHess-ClassProbability": lambda f, x: SmoothHess(ClassProbability(f)).attribute(
        x, target=0, n_samples=8, stdevs=0.1, generator=gen(0)
    ),
}
HIDERS = {
    "lambda": lambda net: lambda z: net(z),
    "held-attribute": lambda net: _Holder(net),
    "held-lambda": lambda net: _Holder(lambda z: net(z)),
}


@pytest.mark.parametrize("hider", list(HIDERS))
@pytest.mark.parametrize("call", list(CALLS))
def test_hidden_training_batch_norm_refused_before_it_updates(call: str, hider: str) -> None:
    net = _bn_net()
    before = _state(net)
    with pytest.raises(ValueError, match=_REFUSED):
        CALLS[call](HIDERS[hider](net), _x())
    assert _same(net, before), "the running statistics changed"


@pytest.mark.parametrize("call", list(CALLS))
def test_hidden_model_in_eval_mode_runs_as_the_model_itself(call: str) -> None:
    """The guard refuses only a layer that would update its buffers: in eval mode the hidden model gives
    the numbers of the model itself."""
    net = _bn_net().eval()
    x = _x()
    got, want = CALLS[call](lambda z: net(z), x), CALLS[call](net, x)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.equal(g, w)


def _squash(t: Tensor) -> Tensor:
    return t.tanh()


class _WithHarmlessCallable(nn.Module):
    """A model with its own batch norm and a plain function in an attribute (as many models have)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _bn_net()
        self.act = _squash  # a user's callable outside the registry: the forward runs guarded

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.net(x))


def test_a_private_copy_run_guarded_updates_its_own_batch_norm_only() -> None:
    """The guard lets the layers of the private copy run: the model is copied (a warning), the user's
    statistics are left as found, and nothing is refused."""
    model = _WithHarmlessCallable().train()
    assert hides_models(model)
    before = _state(model)
    with pytest.warns(RuntimeWarning, match="training mode"):
        h = SmoothHess(model).attribute(_x(), target=0, n_samples=8, stdevs=0.1, generator=gen(0))
    assert torch.isfinite(h).all()
    assert _same(model, before)


def test_modules_and_bound_methods_are_not_guarded() -> None:
    """A model passed as itself (or a bound method of it) is listed in full: no guard, no hook; nor is a
    module holding PyTorch's own functions (a transformer layer's ``activation``)."""
    net = _bn_net()
    assert not hides_models(net) and not hides_models(net.forward)
    assert not hides_models(ClassProbability(net))
    assert not hides_models(nn.TransformerEncoderLayer(4, 2))
    assert hides_models(lambda z: net(z)) and hides_models(ClassProbability(lambda z: net(z)))
    assert hides_models(_WithHarmlessCallable())


def test_a_compiled_model_runs_unguarded_and_without_warnings() -> None:
    """torch.compile keeps its machinery in the module's attributes; a guard's global hook would make
    dynamo warn (and break its graph) at every call."""
    import warnings

    net = _bn_net().eval()
    compiled = torch.compile(net, backend="eager")  # (dynamo traces; no code generation)
    assert not hides_models(compiled)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = SmoothHess(compiled).attribute(_x(), target=0, n_samples=8, stdevs=0.1, generator=gen(0))
    assert not [w for w in caught if "hook" in str(w.message) or "get_ident" in str(w.message)], caught
    want = SmoothHess(net).attribute(_x(), target=0, n_samples=8, stdevs=0.1, generator=gen(0))
    torch.testing.assert_close(got, want)


def test_the_guard_acts_in_the_calling_thread_only() -> None:
    """Another thread training its own batch-norm model while a guarded call runs is left alone."""
    other = _bn_net()
    mean = other[1].running_mean.clone()
    errors: list = []

    def train_step() -> None:
        try:
            other(_x())
        except Exception as err:  # pragma: no cover - the failure this test looks for
            errors.append(err)

    def hidden(z: Tensor) -> Tensor:
        worker = threading.Thread(target=train_step)
        worker.start()
        worker.join()  # its forward runs while the guard's hook is installed
        return z.sum(1, keepdim=True) ** 2

    out = guarded(hidden, "SmoothHess")(_x())
    assert out.shape == (4, 1)
    assert not errors, errors
    assert not torch.equal(other[1].running_mean, mean), "the other thread's training step did not run"


def test_the_guard_leaves_no_hook_behind_after_a_refusal() -> None:
    net = _bn_net()
    with pytest.raises(ValueError, match=_REFUSED):
        guarded(lambda z: net(z), "SmoothHess")(_x())
    before = _state(net)
    net(_x())  # a training step of the user's own, after the refusal: not refused, and it updates
    assert not _same(net, before)


def test_guarded_keeps_the_signature_captum_reads() -> None:
    """Captum's _run_forward calls a function with no parameters without inputs: the guard keeps it."""
    import inspect

    def constant() -> Tensor:
        return torch.ones(1)

    def two(a: Tensor, b: Any = None) -> Tensor:
        return a

    assert len(inspect.signature(guarded(constant, "m")).parameters) == 0
    assert list(inspect.signature(guarded(two, "m")).parameters) == ["a", "b"]


def test_a_scripted_model_is_not_guarded() -> None:
    """TorchScript calls no Python callable it holds (and runs no Python hooks): nothing to guard."""
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 3)))
    assert not hides_models(scripted)


class _Carrier(nn.Module):
    """A module whose forward calls a model it holds outside the registry, in one of several ways."""

    def __init__(self, net: nn.Module, how: str) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)  # a parameter of its own, for the weight-space methods
        if how == "lambda":
            self.fn = lambda z: net(z)
        elif how == "list":
            self.parts = [net]  # a plain list: not registered
        else:
            object.__setattr__(self, "held", net)
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        x = self.lin(x)
        if self.how == "lambda":
            return self.fn(x)
        return self.parts[0](x) if self.how == "list" else self.held(x)


@pytest.mark.parametrize("how", ["lambda", "list", "attribute"])
def test_methods_running_a_carrier_refuse_its_hidden_batch_norm(how: str) -> None:
    """Captum's DeepLift runs its ``model`` (not the tunnel's forward_func), NoiseGrad and FusionGrad a
    private copy of the module's weights: the hidden batch norm is refused there too, and a model held
    in a plain list is found."""
    from captum.attr import DeepLift, Saliency

    from captum_smoothhess import FusionGrad, KernelNoiseTunnel, NoiseGrad

    net = _bn_net()
    carrier = _Carrier(net, how).double()
    assert hides_models(carrier)
    before = _state(net)
    calls = [
        lambda: SmoothHess(carrier).attribute(_x(), target=0, n_samples=8, stdevs=0.1),
        lambda: KernelNoiseTunnel(DeepLift(carrier)).attribute(_x(), target=0, nt_samples=2, stdevs=0.1),
        lambda: KernelNoiseTunnel(Saliency(carrier)).attribute(_x(), target=0, nt_samples=2, stdevs=0.1),
        lambda: NoiseGrad(Saliency(carrier)).attribute(_x(), target=0, nt_samples=2),
        lambda: FusionGrad(Saliency(carrier)).attribute(_x(), target=0, nt_samples=2, input_stdevs=0.1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=_REFUSED):
            call()
        assert _same(net, before), "the running statistics changed"


def test_caso_sees_the_batch_norm_of_a_guarded_model() -> None:
    """A training-mode batch norm couples the examples, so CASO must not batch their Hessian-vector
    products: a model run guarded (it holds a callable) gives the numbers of the same model unguarded."""
    from captum_smoothhess import CASO

    def make(act: Callable[[Tensor], Tensor]) -> nn.Module:
        model = _WithHarmlessCallable().train()
        model.act = act
        return model

    guarded_model, plain = make(_squash), make(torch.tanh)
    assert hides_models(guarded_model) and not hides_models(plain)
    with pytest.warns(RuntimeWarning, match="training mode"):
        got = CASO(guarded_model).attribute(_x(), target=0, lambda1=0.01)
    with pytest.warns(RuntimeWarning, match="training mode"):
        want = CASO(plain).attribute(_x(), target=0, lambda1=0.01)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_only_the_first_forward_of_each_kind_is_hooked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A global hook slows every module call of the process and breaks torch.compile's graphs: a guarded
    forward installs it for the first call of each kind only (SmoothHess: the plain forward without
    gradients, then the first of its eight chunks of gradient calls), not for every chunk."""
    from captum_smoothhess import _model

    installed: List[int] = []
    original = _model.register_module_forward_pre_hook

    def counting(hook: Any) -> Any:
        installed.append(1)
        return original(hook)

    monkeypatch.setattr(_model, "register_module_forward_pre_hook", counting)
    net = _bn_net().eval()
    SmoothHess(lambda z: net(z)).attribute(_x(), target=0, n_samples=64, n_samples_batch_size=8, stdevs=0.1)
    assert len(installed) == 2


class _ThreadedParallel(nn.DataParallel):
    """DataParallel as it runs on GPUs: the module (replica 0, sharing the model's buffers) in another
    thread, which the guard's hook does not watch."""

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        out: List[Any] = []
        worker = threading.Thread(target=lambda: out.append(self.module(*inputs, **kwargs)))
        worker.start()
        worker.join()
        return out[0]


def test_a_dataparallel_behind_a_function_is_refused_and_its_attributes_reach_through() -> None:
    """DataParallel runs its replicas in other threads, where the guard's hook does not look: the
    DataParallel itself is refused when its module would update buffers."""
    net = _bn_net()
    parallel = _ThreadedParallel(net)
    before = _state(net)
    with pytest.raises(ValueError, match=_REFUSED):
        guarded(lambda z: parallel(z), "SmoothHess")(_x())
    assert _same(net, before)
    assert guarded(parallel, "SmoothHess").device_ids == parallel.device_ids


def test_a_branch_taken_with_gradients_on_is_checked_too() -> None:
    """The first forward of a SmoothHess call runs without gradients (it checks the target), the later
    ones with: a function that reaches a hidden training-mode batch norm only then is still refused."""
    quiet, net = _bn_net().eval(), _bn_net()
    before = _state(net)

    def branching(z: Tensor) -> Tensor:
        return net(z) if torch.is_grad_enabled() else quiet(z)

    with pytest.raises(ValueError, match=_REFUSED):
        SmoothHess(branching).attribute(_x(), target=0, n_samples=8, stdevs=0.1)
    assert _same(net, before)


class _SelfClosure(nn.Module):
    """A model whose forward reaches its own layers through a lambda closing over ``self``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 3)
        self.head = lambda z: self.out(self.bn(z).relu())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.inp(x))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_noisegrad_refuses_a_copy_that_runs_the_users_own_layers(mode: str) -> None:
    """NoiseGrad's private copy holds the lambda, which still calls the user's ``bn`` and ``out``: in
    training mode their statistics changed, in eval mode their weight noise was silently lost (the
    result equal to stdevs=0). Both are refused."""
    from captum.attr import Saliency

    from captum_smoothhess import NoiseGrad

    model = _SelfClosure().double().train(mode == "train")
    before = _state(model)
    with pytest.raises(ValueError, match=r"^forward_func: its private copy runs"):
        NoiseGrad(Saliency(model)).attribute(_x(), target=0, nt_samples=2, stdevs=0.5)
    assert _same(model, before)


def test_a_forward_hook_calling_a_hidden_model_is_found() -> None:
    """A hook in a module's hook table may run another model: it is looked into like any attribute."""
    aux = _bn_net()
    net = nn.Sequential(nn.Linear(4, 3)).double()
    handle = net[0].register_forward_hook(lambda m, i, o: o + 0 * aux(i[0]).sum())
    try:
        assert hides_models(net)
        before = _state(aux)
        with pytest.raises(ValueError, match=_REFUSED):
            SmoothHess(net).attribute(_x(), target=0, n_samples=8, stdevs=0.1)
        assert _same(aux, before)
    finally:
        handle.remove()


def test_a_partial_is_judged_by_what_it_binds() -> None:
    """``functools.partial(nn.LayerNorm, eps=1e-6)`` (a layer factory, as timm keeps one) runs no model,
    so it does not make a forward guarded; a partial of a model that is not a submodule does."""
    import functools

    class Holder(nn.Module):
        def __init__(self, held: Any) -> None:
            super().__init__()
            self.held = held
            self.lin = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(x)

    assert not hides_models(Holder(functools.partial(nn.LayerNorm, eps=1e-6)))
    assert not hides_models(Holder(functools.partial(torch.clamp, min=0.0)))
    assert hides_models(Holder(functools.partial(_bn_net())))
    assert hides_models(Holder(functools.partial(_squash)))
