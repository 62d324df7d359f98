"""The network: layer arithmetic, normalisation inside the model, BatchNorm option, presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssd import SSDError, build_model, get_preset
from ssd.config import ModelConfig
from ssd.model import SSD, L2Norm


def test_ssd300_layers_follow_the_paper():
    base = build_model("ssd300").base
    assert base.pool3.ceil_mode and not base.pool1.ceil_mode
    assert (base.pool5.kernel_size, base.pool5.stride, base.pool5.padding) == (3, 1, 1)
    assert base.conv6.dilation == (6, 6) and base.conv6.padding == (6, 6) and base.conv6.out_channels == 1024
    assert base.conv7.kernel_size == (1, 1) and base.conv7.out_channels == 1024
    extras = build_model("ssd300").extras
    assert extras.conv10_2.padding == (0, 0) and extras.conv11_2.padding == (0, 0)
    assert extras.conv8_2.stride == (2, 2) and extras.conv8_2.out_channels == 512


def test_ssd300_feature_maps_match_real_shapes():
    model = build_model("ssd300")
    with torch.no_grad():
        maps = model.features(torch.rand(1, 3, 300, 300))
    assert [m.shape[-1] for m in maps] == [38, 19, 10, 5, 3, 1] == list(model.config.feature_map_sizes)
    assert [m.shape[1] for m in maps] == [512, 1024, 512, 256, 256, 256]


def test_ssd512_layout():
    config = get_preset("ssd512")
    assert config.feature_map_sizes == (64, 32, 16, 8, 4, 2, 1)
    assert config.priors.priors_per_position == (4, 6, 6, 6, 6, 4, 4)
    assert config.num_priors == 24564
    model = SSD(config)
    assert model.extras.conv12_2.kernel_size == (4, 4) and model.extras.conv12_2.padding == (1, 1)
    with torch.device("meta"):
        maps = SSD(config).features(torch.empty(1, 3, 512, 512))
    assert [m.shape[-1] for m in maps] == list(config.feature_map_sizes)


@pytest.mark.parametrize("depths, stride", [((2, 2, 3, 3, 3), 2), ((1, 1, 2, 3, 3), 1), ((1, 1, 3, 3, 3), 2)])
@pytest.mark.parametrize("size", [96, 191, 192, 300])
def test_block_depths_and_conv1_stride_keep_the_layer_arithmetic(depths, stride, size):
    """The derived map sizes (and so the priors) equal the maps the network really makes, also for odd sizes, where
    a strided conv1_1 rounds up and pool1 rounds down; the layers are the ones configured."""
    config = get_preset("small", image_size=size).replace(vgg_depths=depths, conv1_stride=stride)
    model = SSD(config)
    with torch.no_grad():
        maps = model.features(torch.rand(1, 3, size, size))
        loc, logits = model(torch.rand(1, 3, size, size))
    assert [m.shape[-1] for m in maps] == list(config.feature_map_sizes)
    assert loc.shape[1] == logits.shape[1] == config.num_priors == model.priors_cxcywh.shape[0]
    convs = [n for n, m in model.base.named_children() if isinstance(m, nn.Conv2d) and n[4] in "12345"]
    assert [sum(n.startswith(f"conv{b}_") for n in convs) for b in range(1, 6)] == list(depths)
    assert model.base.conv1_1.stride == (stride, stride)
    assert hasattr(model.base, "pool1") == (stride == 1)


def test_block_depths_and_stride_are_checked_and_saved():
    small = get_preset("small")
    for bad, match in [(dict(vgg_depths=(2, 2, 3, 3)), "vgg_depths needs 5"), (dict(vgg_depths=(0, 2, 3, 3, 3)), "vgg_depths"),
                       (dict(conv1_stride=3), "conv1_stride"), (dict(conv1_stride=2.0), "conv1_stride"),
                       (dict(conv1_stride=True), "conv1_stride")]:
        with pytest.raises(SSDError, match=match):
            small.replace(**bad)
    custom = small.replace(vgg_depths=(1, 1, 2, 3, 3), conv1_stride=2)
    assert ModelConfig.from_dict(custom.to_dict()) == custom
    saved_before = {k: v for k, v in small.to_dict().items() if k not in ("vgg_depths", "conv1_stride")}
    # a checkpoint from before the fields existed had VGG16's layers
    assert ModelConfig.from_dict(saved_before) == small.replace(vgg_depths=(2, 2, 3, 3, 3), conv1_stride=1)
    assert get_preset("ssd300").has_vgg16_base and not small.has_vgg16_base
    assert not get_preset("ssd300").replace(vgg_depths=(1, 2, 3, 3, 3)).has_vgg16_base
    assert not get_preset("ssd300").replace(conv1_stride=2).has_vgg16_base


def test_parameter_count_equals_torchvision():
    tv = pytest.importorskip("torchvision.models.detection")
    ours = sum(p.numel() for p in build_model("ssd300").parameters())
    theirs = sum(p.numel() for p in tv.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).parameters())
    assert ours == theirs == 26_285_486


def test_initialisation():
    model = build_model("small")
    assert torch.all(model.l2norm.weight == 20.0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert torch.all(m.bias == 0)
            fan_in, fan_out = m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert m.weight.abs().max() <= bound


def test_l2norm_matches_manual_formula():
    x = torch.randn(2, 8, 5, 5)
    layer = L2Norm(8, 20.0)
    expected = x / x.pow(2).sum(1, keepdim=True).sqrt() * 20.0
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(layer(torch.zeros(1, 8, 2, 2))).all()


def test_normalisation_is_inside_the_model():
    model = build_model("small").eval()
    x = torch.rand(2, 3, 192, 192)
    with torch.no_grad():
        out = model(x)
        # Same result when we normalise by hand and bypass the model's own normalisation.
        model.mean.zero_()
        model.std.fill_(1.0)
        manual = model((x - torch.tensor(model.config.mean).view(1, 3, 1, 1)) / torch.tensor(model.config.std).view(1, 3, 1, 1))
    torch.testing.assert_close(out.loc_offsets, manual.loc_offsets, rtol=1e-4, atol=1e-5)


def test_batch_norm_option_trains_and_has_no_conv_bias():
    model = build_model("small", 3, batch_norm=True)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == sum(model.config.vgg_depths) + 2 + 8 == 10 + 2 + 8  # VGG convs, conv6 + conv7, 8 extra convs
    assert model.base.conv1_1.bias is None and model.loc_heads[0].bias is not None
    loc, logits = model(torch.rand(2, 3, 192, 192))
    (loc.square().mean() + logits.square().mean()).backward()
    assert model.base.bn1_1.weight.grad is not None


def test_class_names_and_counts():
    model = build_model("small", ["cat", "dog"])
    assert model.num_classes == 3 and model.class_names == ("cat", "dog")
    assert model(torch.rand(1, 3, 192, 192)).cls_logits.shape == (1, model.config.num_priors, 3)
    assert build_model("small", 5).class_names == ("class1", "class2", "class3", "class4", "class5")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(preset="nope"), "unknown preset"),
        (dict(preset="small", class_names=["a", "a"]), "unique"),
        (dict(preset="small", class_names=["background", "a"]), "foreground"),
        (dict(preset="small", class_names=0), "at least one class"),
        (dict(preset="ssd300", image_size=64), "too small"),
    ],
)
def test_bad_configurations_are_clear_errors(kwargs, message):
    preset = kwargs.pop("preset")
    with pytest.raises(SSDError, match=message):
        build_model(preset, **kwargs)


def test_config_round_trips_through_plain_dict():
    import json

    for name in ("ssd300", "ssd300-torchvision", "ssd512", "small"):
        config = get_preset(name)
        again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config


def test_detect_returns_one_record_per_image_in_pixels():
    torch.manual_seed(0)
    model = build_model("small", 3).eval()
    images = torch.rand(3, 3, 192, 192)
    dets = model.detect(images, min_score=0.2, top_k=10, image_sizes=[(100, 200)] * 3)
    assert len(dets) == 3
    for d in dets:
        assert d.boxes.shape[1] == 4 and len(d.boxes) == len(d.labels) == len(d.scores) <= 10
        assert torch.all(d.scores > 0.2) and torch.all((d.labels >= 1) & (d.labels <= 3))
        assert torch.all(d.scores[:-1] >= d.scores[1:])
    assert model.training is False
    rel = model.detect(images, min_score=0.2, top_k=10)
    torch.testing.assert_close(dets[0].boxes, rel[0].boxes * torch.tensor([200, 100, 200, 100]))


def test_gradients_flow_end_to_end():
    from ssd.loss import MultiBoxLoss, pad_targets

    model = build_model("small", 2)
    loss_fn = MultiBoxLoss(model.priors_cxcywh)
    boxes, labels = pad_targets([torch.tensor([[0.1, 0.1, 0.5, 0.6]]), torch.zeros(0, 4)], [torch.tensor([1]), torch.zeros(0, dtype=torch.long)])
    out = loss_fn(*model(torch.rand(2, 3, 192, 192)), boxes, labels)
    out.total.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert F.mse_loss(out.total, out.cls + out.loc) == 0


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(1, 3, 100, 100), r"must be a tensor \(N, 3, 192, 192\).*got \(1, 3, 100, 100\)"),
        (torch.rand(3, 192, 192), r"got \(3, 192, 192\)"),
        (torch.rand(1, 1, 192, 192), r"got \(1, 1, 192, 192\)"),
        (torch.zeros(1, 3, 192, 192, dtype=torch.uint8), "floating point"),
        ([torch.rand(3, 192, 192)], "got list"),
    ],
)
def test_detect_refuses_inputs_the_model_cannot_read(images, match):
    """Another input size lays out other priors: the boxes would be silently wrong, so it is refused in one line."""
    model = build_model("small", 2).eval()
    with pytest.raises(SSDError, match=match) as err:
        model.detect(images)
    assert "\n" not in str(err.value)


def test_detect_checks_settings_and_takes_an_empty_batch():
    model = build_model("small", 2).eval()
    assert model.detect(torch.rand(0, 3, 192, 192)) == []
    with pytest.raises(SSDError, match="min_score must be in"):
        model.detect(torch.rand(1, 3, 192, 192), min_score=2)
    with pytest.raises(SSDError, match="top_k must be at most the model's 3458 priors"):
        model.detect(torch.rand(1, 3, 192, 192), top_k=10**9)
