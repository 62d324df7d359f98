"""One training step (ssd.training.step): the loss and gradients of the plain computation, a skip of non-finite
steps on the device without a host sync, accumulation, padding of the targets, and the fused optimisers."""

from __future__ import annotations

import copy

import pytest
import torch

from ssd.data.dataset import Batch
from ssd.training.config import TrainConfig
from ssd.training.setup import make_optimizer
from ssd.loss import MultiBoxLoss, pad_targets
from ssd.model import build_model
from ssd.training.step import StepHealth, TrainStep, make_loss, pad_objects_to, supports_device_skip


def _batch(n: int = 4, size: int = 96, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for _ in range(n):
        m = int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 0.6
        wh = 0.1 + torch.rand(m, 2, generator=g) * 0.3
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=1.0)], 1))
        labels.append(torch.randint(1, 4, (m,), generator=g))
    gt_boxes, gt_labels = pad_targets(boxes, labels)
    images = torch.rand(n, 3, size, size, generator=g)
    return Batch(images, gt_boxes, gt_labels, torch.zeros_like(gt_labels, dtype=torch.bool), torch.arange(n),
                 torch.full((n, 2), size), ())  # fmt: skip


def _model():
    torch.manual_seed(0)
    return build_model("small", 3, image_size=96).train()


def _step(model, optimizer=None, **kw) -> TrainStep:
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss = MultiBoxLoss(model.priors_cxcywh)
    return TrainStep(model, list(model.parameters()), loss, optimizer, torch.amp.GradScaler("cpu", enabled=False), **kw)


def test_loss_and_gradients_equal_the_plain_computation():
    batch = _batch()
    model, reference = _model(), _model()
    out = _step(model, grad_clip=None)([batch])
    loc, logits = reference(batch.images)
    expected = MultiBoxLoss(reference.priors_cxcywh)(loc, logits, batch.boxes_xyxy_rel, batch.labels)
    expected.total.backward()
    assert torch.equal(out.loss.total, expected.total.detach()) and torch.equal(out.loss.cls, expected.cls.detach())
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert not out.skipped and torch.isfinite(out.grad_norm)


def test_accumulated_micro_batches_average_their_gradients():
    a, b = _batch(2, seed=1), _batch(2, seed=2)
    model = _model()
    out = _step(model)([a, b])
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    singles = []
    for part in (a, b):
        m = _model()
        singles.append((_step(m)([part]), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert torch.allclose(out.loss.total, (singles[0][0].loss.total + singles[1][0].loss.total) / 2)
    for name, g in grads.items():
        torch.testing.assert_close(g, (singles[0][1][name] + singles[1][1][name]) / 2, rtol=1e-5, atol=1e-7)


def test_padded_targets_give_the_same_loss():
    batch = _batch()
    boxes, labels = pad_objects_to(batch.boxes_xyxy_rel, batch.labels, 8)
    assert labels.shape[1] == 8 and boxes.shape[1] == 8 and torch.equal(labels[:, : batch.labels.shape[1]], batch.labels)
    loss = MultiBoxLoss(_model().priors_cxcywh)
    g = torch.Generator().manual_seed(5)
    loc, logits = torch.randn(4, loss.priors_cxcywh.shape[0], 4, generator=g), torch.randn(4, loss.priors_cxcywh.shape[0], 4, generator=g)
    assert all(torch.equal(x, y) for x, y in zip(loss(loc, logits, batch.boxes_xyxy_rel, batch.labels), loss(loc, logits, boxes, labels)))
    empty_boxes, empty_labels = pad_objects_to(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), 8)
    assert empty_boxes.shape == (2, 8, 4) and not empty_labels.any()


def _fused_optimizer(model, name="sgd"):
    cfg = TrainConfig(optimizer=name, weight_decay=5e-4)
    return make_optimizer(model, cfg, 1e-3, fused=True)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_non_finite_step_is_skipped_on_the_device_without_a_sync(name, monkeypatch):
    """The fused optimiser takes the flag as a tensor: no parameter or state changes, and nothing in the step
    reads a tensor on the host (``bool()``, ``item()``, ``tolist()`` all raise here)."""
    model = _model()
    optimizer = _fused_optimizer(model, name)
    step = _step(model, optimizer, grad_clip=10.0)
    assert step.device_skip and supports_device_skip(optimizer)
    batch = _batch()
    step([batch])  # one good step, so that the state exists
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    poisoned = batch._replace(images=batch.images * float("nan"))

    def no_sync(*args, **kwargs):
        raise AssertionError("the step read a device value on the host")

    health = StepHealth(torch.device("cpu"))
    with monkeypatch.context() as m:
        for attr in ("__bool__", "item", "tolist"):
            m.setattr(torch.Tensor, attr, no_sync)
        out = step([poisoned])
        health.record(out.skipped, 2)
    assert bool(out.skipped) and health.read() == (1, 2)
    after = model.state_dict(), optimizer.state_dict()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    for k, state in before[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after[1]["state"][k][key])), (k, key)
    out = step([batch])
    assert not bool(out.skipped) and health.read() == (1, 2)


def test_fused_sgd_updates_as_the_default_sgd():
    """Fused SGD (momentum buffers started at zero) gives the default implementation's weights, bit for bit."""
    batches = [_batch(seed=s) for s in range(3)]
    results = []
    for fused in (False, True):
        model = _model()
        step = _step(model, make_optimizer(model, TrainConfig(), 1e-2, fused=fused))
        for b in batches:
            step([b])
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_without_a_fused_optimiser_the_flag_is_read_on_the_host():
    model = _model()
    step = _step(model)  # plain SGD: no device skip
    assert not step.device_skip
    before = copy.deepcopy(model.state_dict())
    out = step([_batch()._replace(images=torch.full((4, 3, 96, 96), float("nan")))])
    assert bool(out.skipped) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_compiled_model_and_loss_give_the_eager_loss_and_gradients():
    """``--compile``: the model and the loss compiled (targets padded) give the eager step's loss and gradients.

    Not bit for bit: inductor reorders float sums, and where a max-pooling window holds equal values (zeros after
    ReLU are common) its backward may route the gradient to another of them, which moves the first layers'
    gradients by up to about 1% of their norm; the loss and the later layers agree to about 1e-6."""
    batch = _batch()
    eager, compiled = _model(), _model()
    out_e = _step(eager)([batch])
    step = TrainStep(torch.compile(compiled), list(compiled.parameters()), make_loss(compiled.priors_cxcywh, "smooth_l1", "bipartite", compiled=True),
                     torch.optim.SGD(compiled.parameters(), lr=1e-3, momentum=0.9), torch.amp.GradScaler("cpu", enabled=False),
                     pad_targets_to=8)  # fmt: skip
    out_c = step([batch])
    torch.testing.assert_close(out_c.loss.total, out_e.loss.total, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        assert float((p.grad - q.grad).norm()) <= 0.02 * float(q.grad.norm()) + 1e-9, name

