"""ImageNet VGG16 -> base (fc6/fc7 decimation) and the tutorial's state-dict names."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from ssd import SSDError, build_model
from ssd.weights import (
    VGG16_CONV_NAMES,
    VGG16_FEATURE_INDICES,
    load_pretrained_base,
    read_state_dict,
    tutorial_to_state,
    vgg16_to_base_state,
)


@pytest.fixture(scope="module")
def vgg_state():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).state_dict()


def test_decimation_picks_exact_indices(vgg_state):
    base = vgg16_to_base_state(vgg_state)
    fc6 = vgg_state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert base["conv6.weight"].shape == (1024, 512, 3, 3)
    for out_i, src_o in [(0, 0), (1, 4), (1023, 4092), (517, 2068)]:
        for r, src_r in enumerate((0, 3, 6)):
            for c, src_c in enumerate((0, 3, 6)):
                assert torch.equal(base["conv6.weight"][out_i, :, r, c], fc6[src_o, :, src_r, src_c])
    assert torch.equal(base["conv6.bias"], vgg_state["classifier.0.bias"][0:4096:4])
    fc7 = vgg_state["classifier.3.weight"]
    assert base["conv7.weight"].shape == (1024, 1024, 1, 1)
    assert base["conv7.weight"][5, 7, 0, 0] == fc7[20, 28]
    assert torch.equal(base["conv7.weight"][:, :, 0, 0], fc7[0::4, 0::4])
    assert torch.equal(base["conv7.bias"], vgg_state["classifier.3.bias"][0::4])


def test_convolutions_copied(vgg_state):
    base = vgg16_to_base_state(vgg_state)
    assert torch.equal(base["conv1_1.weight"], vgg_state["features.0.weight"])
    assert torch.equal(base["conv4_3.bias"], vgg_state["features.21.bias"])
    assert torch.equal(base["conv5_3.weight"], vgg_state["features.28.weight"])
    assert len(base) == 2 * 15


def test_loads_into_the_model_from_a_file(vgg_state, tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(vgg_state, path)
    model = build_model("ssd300")
    assert load_pretrained_base(model, path) == []
    assert torch.equal(model.base.conv2_1.weight, vgg_state["features.5.weight"])
    # The torchvision preset normalises differently: the loader says so.
    tv_model = build_model("ssd300-torchvision")
    notes = load_pretrained_base(tv_model, path)
    assert notes and "normalises" in notes[0]


def test_refuses_features_only_weights_and_unfit_models(vgg_state, tmp_path):
    features_only = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
    with pytest.raises(SSDError, match="IMAGENET1K_V1"):
        vgg16_to_base_state(features_only)
    with pytest.raises(SSDError, match="cannot use them"):
        load_pretrained_base(build_model("small"), "imagenet")
    with pytest.raises(SSDError, match="cannot use them"):  # VGG16's widths, but not its depths
        load_pretrained_base(build_model("ssd300", vgg_depths=(2, 2, 3, 3, 2)), "imagenet")
    with pytest.raises(SSDError, match="not found"):
        load_pretrained_base(build_model("ssd300"), tmp_path / "missing.pth")
    assert load_pretrained_base(build_model("small"), "none") == []


def test_tutorial_mapping_rejects_unknown_names(tutorial_recipe_state):
    with pytest.raises(SSDError, match="unexpected entry"):
        tutorial_to_state({**tutorial_recipe_state, "something.else": torch.zeros(1)})
    mapped = tutorial_to_state(tutorial_recipe_state)
    assert torch.equal(mapped["loc_heads.5.weight"], tutorial_recipe_state["pred_convs.loc_conv11_2.weight"])
    assert torch.equal(mapped["cls_heads.1.bias"], tutorial_recipe_state["pred_convs.cl_conv7.bias"])
    assert torch.equal(mapped["extras.conv9_2.weight"], tutorial_recipe_state["aux_convs.conv9_2.weight"])
    assert mapped["l2norm.weight"].shape == (512,)


def test_vgg16_table_names_torchvisions_convolutions_and_ours(vgg_state):
    feature_convs = sorted({int(k.split(".")[1]) for k in vgg_state if k.startswith("features.")})
    assert feature_convs == list(VGG16_FEATURE_INDICES)
    base = build_model("ssd300").base
    ours = [name for name, m in base.named_children() if isinstance(m, nn.Conv2d)]
    assert ours == [*VGG16_CONV_NAMES, "conv6", "conv7"]


def test_read_state_dict_unwraps_checkpoints_and_keeps_the_cause(tmp_path):
    state = {"a.weight": torch.ones(2), "a.bias": torch.zeros(2)}
    for key in ("model", "state_dict"):
        torch.save({key: state, "epoch": 3}, tmp_path / f"{key}.pt")
        got = read_state_dict(tmp_path / f"{key}.pt", "--pretrained-base")
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pt")
    with pytest.raises(SSDError, match="weights: .* not a state dict of tensors"):
        read_state_dict(tmp_path / "no_tensors.pt", "torchvision weights")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SSDError, match="--pretrained-base: cannot read") as refused:
        read_state_dict(junk, "--pretrained-base")
    assert refused.value.__cause__ is not None
