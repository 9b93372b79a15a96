"""skorch nets: scikit-learn's estimator checks, and the adapters against ground truths."""

import os
import warnings

import numpy as np
import pytest
import torch

skorch = pytest.importorskip("skorch")

from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor  # noqa: E402

from sklearn_puma import PumaPatcher, PumaWarning, UnsupportedEstimatorError  # noqa: E402
from sklearn_puma._adapters import make_adapter  # noqa: E402
from sklearn_puma._autodiff import gradient, hvp_function, objective  # noqa: E402

from .skorch_modules import LazyMLP  # noqa: E402

# float64 modules: the sample-weight equivalence check compares predictions to 1e-7,
# below float32's resolution.  Full-batch training keeps fits short and deterministic.
# PUMA_TEST_DEVICE=cuda runs the same checks with the nets on a GPU.
DEVICE = os.environ.get("PUMA_TEST_DEVICE", "cpu")
COMMON = dict(module=LazyMLP, module__dtype=torch.float64, max_epochs=20, lr=0.1,
              train_split=None, verbose=0, device=DEVICE)
CLASSIFIER = PumaPatcher(NeuralNetClassifier(module__n_out=3, **COMMON), random_state=0)
REGRESSOR = PumaPatcher(NeuralNetRegressor(module__n_out=1, module__output="logits",
                                           **COMMON), random_state=0)

# The classifier's output layer has 3 units: checks that train it on another number
# of classes cannot pass, whatever wraps the net.
CLASS_COUNT = "the module's output layer has a fixed number (3) of classes"
EXPECTED_FAILED_CHECKS = {
    repr(CLASSIFIER): {
        "check_classifiers_train": CLASS_COUNT + "; the check trains on 2",
        "check_dtype_object": CLASS_COUNT + "; the check trains on 4",
    },
}


CHECKS = parametrize_with_checks([CLASSIFIER, REGRESSOR],
                                 expected_failed_checks=lambda e: EXPECTED_FAILED_CHECKS.get(
                                     repr(e), {}))


def _check_id(obj):
    """A net's test id by its class, not its repr: skorch's repr shows a set
    (``_params_to_validate``) whose order follows the string hash seed, which differs
    between pytest-xdist's workers, so they collected different ids and xdist refused to
    run ("Different tests were collected between gw0 and gw1")."""
    if isinstance(obj, PumaPatcher):
        return f"PumaPatcher({type(obj.estimator).__name__})"
    return CHECKS.kwargs["ids"](obj)


@pytest.mark.parametrize(*CHECKS.args, ids=_check_id)
def test_skorch_nets_are_sklearn_compatible(estimator, check):
    check(estimator)


NETS = {
    "nll-on-probabilities": lambda: NeuralNetClassifier(module__n_out=3, **COMMON),
    "cross-entropy": lambda: NeuralNetClassifier(
        module__n_out=3, module__output="logits", criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=0.01, **COMMON),
    "binary": lambda: NeuralNetBinaryClassifier(module__n_out=1, module__output="squeeze",
                                                **COMMON),
    "regressor-2-outputs": lambda: NeuralNetRegressor(module__n_out=2,
                                                      module__output="logits", **COMMON),
}


@pytest.fixture(scope="module", params=sorted(NETS))
def fitted_net(request, wine, breast_cancer, diabetes):
    if request.param.startswith("regressor"):
        X, y = diabetes
        y = np.column_stack([y, X[:, 0]])
    elif request.param == "binary":
        X, y = breast_cancer
    else:
        X, y = wine
    X, y = X[:120], y[:120]
    puma = PumaPatcher(NETS[request.param](), random_state=0).fit(X, y)
    return request.param, puma, X, y


def test_loss_matches_skorch_get_loss(fitted_net):
    """The mean-form objective is skorch's own batch loss plus the weight decay."""
    name, puma, X, y = fitted_net
    net, adapter = puma.estimator_, puma._problem.adapter
    Xt = torch.as_tensor(X, dtype=torch.float64, device=adapter.device)
    y_model = puma._io.fit_args(X, y, fitted=net)[1]
    with torch.no_grad():
        skorch_loss = net.get_loss(net.infer(Xt), torch.as_tensor(y_model,
                                                                 device=adapter.device))
    J = objective(adapter, puma._problem.X, puma._problem.y, puma._problem.s, len(X))
    decay = net.optimizer_.param_groups[0]["weight_decay"]
    expected = skorch_loss.item() + 0.5 * decay * float((adapter.theta**2).sum())
    assert J(adapter.theta).item() == pytest.approx(expected, rel=1e-8)


def test_gradient_and_hvp_match_finite_differences(fitted_net):
    name, puma, X, y = fitted_net
    problem = puma._problem
    adapter, n = problem.adapter, problem.n
    J = objective(adapter, problem.X, problem.y, problem.s, n)
    theta = adapter.theta
    g = gradient(adapter, theta, problem.X, problem.y, problem.s, n)
    eps = 1e-6
    eye = torch.eye(adapter.n_params, dtype=theta.dtype, device=theta.device)
    g_fd = torch.stack([(J(theta + eps * e) - J(theta - eps * e)) / (2 * eps) for e in eye])
    assert (g - g_fd).norm() <= 1e-5 * g.norm()
    v = torch.randn(adapter.n_params, dtype=theta.dtype, device=theta.device,
                    generator=torch.Generator(device=theta.device).manual_seed(0))
    hv = hvp_function(adapter, theta, problem.X, problem.y, problem.s, n)(v)
    hv_fd = (gradient(adapter, theta + eps * v, problem.X, problem.y, problem.s, n)
             - gradient(adapter, theta - eps * v, problem.X, problem.y, problem.s, n)
             ) / (2 * eps)
    assert (hv - hv_fd).norm() <= 1e-5 * hv_fd.norm()


def test_patched_weights_are_written_back(fitted_net):
    name, puma, X, y = fitted_net
    base = make_adapter(puma._base_estimator, n_features=X.shape[1])
    puma.patch(np.arange(6))
    patched = make_adapter(puma.estimator_, n_features=X.shape[1])
    assert patched.device == base.device and patched.dtype == base.dtype
    assert not torch.allclose(patched.theta, base.theta)
    # The patched net's own predictions come from the written-back parameters.
    out = patched.forward(patched.theta, torch.as_tensor(X, dtype=patched.dtype,
                                                          device=patched.device))
    if patched.is_classifier:
        np.testing.assert_allclose(puma.predict_proba(X),
                                   patched.log_proba(out).exp().cpu().numpy(), rtol=1e-6,
                                   # a converged patch of a net trained for 20 epochs
                                   # fits some rows to 1e-15: 1 - p rounds there
                                   atol=1e-12)
    else:
        np.testing.assert_allclose(puma.predict(X), out.detach().cpu().numpy(), rtol=1e-10)


def test_last_layer_patch_matches_last_layer_retraining(wine):
    """parameters="last_layer" on a skorch net: earlier layers untouched, the last one
    equal to the last layer retrained on sample_weight_ (a generic optimiser)."""
    from .test_networks import retrain

    X, y = wine
    net = NeuralNetClassifier(module__n_out=3, module__output="logits",
                              criterion=torch.nn.CrossEntropyLoss,
                              optimizer__weight_decay=0.01, **COMMON).fit(X, y)
    last = make_adapter(net, "last_layer", n_features=X.shape[1])
    if last.device.type != "cpu":
        pytest.skip("the reference optimiser runs on the CPU")
    # Influence assumes an optimum: drive the last layer to one first.
    net = last.build(retrain(last, last.theta, X, y, np.ones(len(X))))
    last = make_adapter(net, "last_layer", n_features=X.shape[1])
    remove = np.zeros(len(X), dtype=bool)
    remove[np.flatnonzero(y == 0)[:20]] = True
    puma = PumaPatcher(FrozenEstimator(net), parameters="last_layer", delta=1.0)
    puma.fit(X, y, remove=remove, eval_set=(X[remove], y[remove]))
    assert puma.lambda_.sum() > 0
    before = make_adapter(net, n_features=X.shape[1])
    after = make_adapter(puma.estimator_, n_features=X.shape[1])
    hidden = before.n_params - 3 * 9
    assert torch.equal(before.theta[:hidden], after.theta[:hidden])
    retrained = retrain(last, last.theta, X, y, puma.sample_weight_)
    patched = make_adapter(puma.estimator_, "last_layer", n_features=X.shape[1]).theta
    error = (patched - retrained).norm() / (last.theta - retrained).norm()
    print(f"skorch last-layer patch vs retraining: relative error {error:.2e}")
    assert error <= 0.01


def test_objective_passes_in_threads_leave_the_module_intact():
    """A skorch adapter's forward swaps tensors into the shared module
    (functional_call): passes over more rows than one chunk, with worker threads
    allowed, must not run it in two threads at once.  Before this was known, a
    50,000-row net patched with a second path came back with no trainable
    parameter."""
    skorch = pytest.importorskip("skorch")
    from sklearn_puma._adapters import make_adapter
    from sklearn_puma._autodiff import _SUM_ROWS, objective_value

    from .skorch_modules import LazyMLP

    rng = np.random.default_rng(0)
    n = 3 * _SUM_ROWS
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    net = skorch.NeuralNetClassifier(LazyMLP, module__n_out=2, max_epochs=1,
                                     train_split=None, verbose=0).fit(X, y)
    adapter = make_adapter(net, n_features=4)
    before = list(net.module_.named_parameters())
    Xt, yt = adapter.encode_X(X), adapter.encode_y(y)
    weights = torch.ones(n, dtype=adapter.dtype)
    for _ in range(20):
        theta = adapter.theta + 0.01 * torch.randn_like(adapter.theta)
        value = objective_value(adapter, theta, Xt, yt, weights, n, n_jobs=2)
        assert np.isfinite(value)
    after = list(net.module_.named_parameters())
    assert [name for name, _ in after] == [name for name, _ in before]
    assert all(a is b and isinstance(a, torch.nn.Parameter) and a.requires_grad
               for (_, a), (_, b) in zip(after, before))


@pytest.mark.parametrize("net, match", [
    (lambda: NeuralNetClassifier(module__n_out=3, module__output="logits",
                                 criterion=torch.nn.CrossEntropyLoss,
                                 criterion__weight=torch.tensor([1.0, 2.0, 3.0],
                                                                dtype=torch.float64),
                                 **COMMON), r"CrossEntropyLoss\(weight=...\) weighs"),
    (lambda: NeuralNetClassifier(module__n_out=3,
                                 criterion__weight=torch.tensor([1.0, 2.0, 3.0],
                                                                dtype=torch.float64),
                                 **COMMON), r"NLLLoss\(weight=...\)"),
    (lambda: NeuralNetClassifier(module__n_out=3, module__output="logits",
                                 criterion=torch.nn.CrossEntropyLoss,
                                 criterion__label_smoothing=0.1, **COMMON),
     "label_smoothing=0.1"),
    (lambda: NeuralNetBinaryClassifier(module__n_out=1, module__output="squeeze",
                                       criterion__pos_weight=torch.tensor(
                                           3.0, dtype=torch.float64), **COMMON),
     r"pos_weight=...\)"),
    (lambda: NeuralNetClassifier(module__n_out=3, optimizer=torch.optim.AdamW,
                                 optimizer__weight_decay=0.01, **COMMON),
     "AdamW's decoupled weight decay"),
])
def test_a_net_trained_on_another_objective_is_refused(net, match, wine, breast_cancer):
    """Each of these was accepted and differentiated as the plain mean loss (plus an
    L2 penalty): a class-weighted cross-entropy net on ISLP's College, driven to its
    own optimum, was patched to completeness 0.42 of a warm retrain on its weighted
    objective (J_w 11% above it), with eta_=1 and no warning; a five-logit module for
    three classes gave five columns of probabilities beside three ``classes_`` (now
    said: ``test_a_module_wider_than_the_classes_is_said``)."""
    net = net()
    X, y = breast_cancer if isinstance(net, NeuralNetBinaryClassifier) else wine
    with pytest.raises(UnsupportedEstimatorError, match=match):
        PumaPatcher(net).fit(X[::2], y[::2])  # every class in the rows


def test_an_adam_net_with_coupled_decay_is_accepted(wine):
    X, y = wine
    puma = PumaPatcher(NeuralNetClassifier(module__n_out=3, optimizer=torch.optim.Adam,
                                           optimizer__weight_decay=0.01, **COMMON))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 epochs of Adam: not at an optimum
        puma.fit(X[::2], y[::2])
    assert puma._problem.adapter._weight_decay == 0.01  # read as the L2 penalty


def test_a_module_wider_than_the_classes_is_said(wine):
    X, y = wine
    with pytest.warns(PumaWarning, match=r"gives 5 outputs a row where the classes need "
                                         r"one per class \(3\): its predict_proba has 5 "
                                         r"columns beside 3 classes_"):
        puma = PumaPatcher(NeuralNetClassifier(module__n_out=5, **COMMON)).fit(X[::2],
                                                                               y[::2])
    assert puma.predict_proba(X).shape == (len(X), 5)  # skorch's own


class _BatchNormMLP(torch.nn.Module):
    def __init__(self, n_out=3):
        super().__init__()
        self.hidden = torch.nn.LazyLinear(8, dtype=torch.float64)
        self.norm = torch.nn.BatchNorm1d(8, dtype=torch.float64)
        self.out = torch.nn.Linear(8, n_out, dtype=torch.float64)

    def forward(self, X):
        return torch.softmax(self.out(torch.tanh(self.norm(self.hidden(X)))), dim=-1)


def test_a_batch_norm_module_is_probed_in_eval_mode(wine):
    """The output-width probe passed one row through the module as skorch left it (in
    training mode, with ``train_split=None``): batch norm refused a batch of one."""
    X, y = wine
    net = NeuralNetClassifier(_BatchNormMLP, **{k: v for k, v in COMMON.items()
                                               if not k.startswith("module")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 epochs: not at an optimum
        puma = PumaPatcher(net).fit(X[::2], y[::2])
    assert puma.predict_proba(X).shape == (len(X), 3)
