"""The ssd300 preset with the tutorial's weights reproduces the tutorial's own outputs (goldens)."""

from __future__ import annotations

import torch

from ssd import build_model
from ssd.weights import tutorial_to_state


def _model(state):
    model = build_model("ssd300")
    model.load_state_dict(tutorial_to_state(state))
    return model.eval()


def test_recipe_matches_checksums(tutorial_golden, tutorial_recipe_state):
    sums = torch.tensor([t.double().sum().item() for t in tutorial_recipe_state.values()], dtype=torch.float64)
    torch.testing.assert_close(sums, tutorial_golden["weight_checksums"].double(), rtol=1e-9, atol=1e-9)


def test_mapping_covers_every_tensor(tutorial_recipe_state):
    ours = build_model("ssd300").state_dict()
    mapped = tutorial_to_state(tutorial_recipe_state)
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def test_priors_equal_golden(tutorial_golden):
    torch.testing.assert_close(build_model("ssd300").priors_cxcywh, tutorial_golden["priors_cxcy"], rtol=0, atol=1e-6)


def test_normalisation_belongs_to_model(tutorial_golden):
    model = build_model("ssd300")
    normalised = (tutorial_golden["images01"] - model.mean) / model.std
    torch.testing.assert_close(normalised, tutorial_golden["images_normalised"], rtol=0, atol=1e-5)


def test_raw_outputs_equal_golden(tutorial_golden, tutorial_recipe_state):
    model = _model(tutorial_recipe_state)
    with torch.no_grad():
        loc, logits = model(tutorial_golden["images01"])
    torch.testing.assert_close(loc, tutorial_golden["loc_offsets"], rtol=0, atol=1e-4)
    torch.testing.assert_close(logits, tutorial_golden["cls_logits"], rtol=0, atol=1e-4)


def test_detections_equal_golden(tutorial_golden):
    # Decode the golden raw outputs (the tutorial's own) with our post-processing.
    model = build_model("ssd300")
    from ssd.postprocess import postprocess

    dets = postprocess(
        tutorial_golden["loc_offsets"], tutorial_golden["cls_logits"], model.priors_cxcywh,
        model.config.decode, min_score=0.01, max_overlap=0.45, top_k=200,
    )  # fmt: skip
    for i, det in enumerate(dets):
        boxes, labels, scores = (tutorial_golden[f"det_{k}_{i}"] for k in ("boxes_xyxy_rel", "labels", "scores"))
        assert len(det.scores) == len(scores)
        # Same set of detections: order both by (score desc, label) to compare element-wise.
        def key(s, l):
            return sorted(range(len(s)), key=lambda j: (-round(float(s[j]), 6), int(l[j])))

        a, b = key(det.scores, det.labels), key(scores, labels)
        torch.testing.assert_close(det.scores[a], scores[b], rtol=0, atol=1e-5)
        assert torch.equal(det.labels[a], labels[b])
        torch.testing.assert_close(det.boxes[a], boxes[b], rtol=0, atol=1e-5)
