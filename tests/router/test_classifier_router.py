"""A v2 model with target shares in the real sidecar (fake engines on loopback)."""

from __future__ import annotations

import json
import math

import pytest

from shoal.router.classifier import Example, train
from shoal.router.share import hold_shares

from .conftest import ladder_config
from .test_classifier_v2 import synthetic
from .test_router_serving import client_for

HARD = "prove lemma 999 about compact manifolds rigorously"
EASY = "add 500 and 503 please"


@pytest.fixture(scope="module")
def model_json() -> str:
    from shoal.router.classifier import train_difficulty

    examples = [Example(e.prompt, {"small": e.outcomes["small"], "frontier": e.outcomes["large"]}) for e in synthetic()]
    return json.dumps(train_difficulty(examples, ["small", "frontier"], epochs=4, calibration_folds=3).to_json())


def tiers_for(router, prompts):
    client = client_for(router)
    out = []
    for prompt in prompts:
        raw = client.chat.completions.with_raw_response.create(model="x", messages=[{"role": "user", "content": prompt}])
        out.append((raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]))
    return out


def test_the_sidecar_routes_by_the_v2_model_and_reports_its_held_share(fresh_engines, start_router, tmp_path, model_json):
    path = tmp_path / "model.json"
    path.write_text(model_json)
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], classifier={"path": str(path)}))
    assert tiers_for(router, [HARD, EASY]) == [("frontier", "classifier"), ("small", "classifier")]
    # Without target shares there is nothing held, so no share gauges.
    assert router.metric("shoal_classifier_target_share_ratio", {"tier": "small"}) is None

    # Keep nothing on small: every classifier-routed request starts at frontier.
    held = start_router(ladder_config(fresh_engines, tmp_path, rules=[], classifier={"path": str(path), "targetShares": {"small": 0.0}}))
    assert tiers_for(held, [HARD, EASY]) == [("frontier", "classifier"), ("frontier", "classifier")]
    assert held.metric("shoal_classifier_target_share_ratio", {"tier": "small"}) == 0.0
    assert held.metric("shoal_classifier_threshold", {"tier": "small"}) == -math.inf
    # Keep everything on small.
    held = start_router(ladder_config(fresh_engines, tmp_path, rules=[], classifier={"path": str(path), "targetShares": {"small": 1.0}}))
    assert tiers_for(held, [HARD, EASY]) == [("small", "classifier"), ("small", "classifier")]
    assert held.metric("shoal_classifier_effective_share_ratio", {"tier": "small"}) == 1.0


def test_target_shares_need_a_v2_model_that_routes_between_those_tiers(model_json):
    from shoal.router.classifier import DifficultyModel

    v1 = train([("a", "small"), ("b", "frontier")], classes=["small", "frontier"], epochs=1)
    with pytest.raises(ValueError, match="targetShares needs a v2 model"):
        hold_shares(v1, {"small": 0.5})
    v2 = DifficultyModel.from_json(json.loads(model_json))
    with pytest.raises(ValueError, match=r"tiers the model does not route between: \['frontier'\]"):
        hold_shares(v2, {"frontier": 0.5})
    assert hold_shares(v2, {"small": 0.5}).controller.targets == {"small": 0.5}


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ({"small": 1.5}, "classifier.targetShares.small must be between 0 and 1"),
        ({"small": 0.7, "large": 0.6}, "classifier.targetShares add up to more than 1"),
        ({"frontier": 0.1}, "classifier.targetShares names 'frontier', which is not a tier below the largest (small, large)"),
        ({"nope": 0.1}, "classifier.targetShares names 'nope'"),
    ],
)
def test_a_policy_with_target_shares_that_cannot_work_is_refused_naming_the_field(policy_body, shares, message):
    import copy

    from pydantic import ValidationError

    from shoal.api.routepolicy import RoutePolicy

    body = copy.deepcopy(policy_body)
    body["spec"]["classifier"] = {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}, "targetShares": shares}
    with pytest.raises(ValidationError) as info:
        RoutePolicy.from_body(body)
    assert message in str(info.value)
    body["spec"]["classifier"]["targetShares"] = {"small": 0.8}
    assert RoutePolicy.from_body(body).spec.classifier.target_shares == {"small": 0.8}



def test_the_rendered_router_config_carries_the_target_shares():
    from shoal.api.routerconfig import RouterConfig
    from shoal.render.routerconfig import render_router_config

    from .test_render_routerconfig import POLICY, TIERS

    policy = POLICY.model_copy(deep=True)
    policy.spec.classifier.target_shares = {"small": 0.8}
    config = render_router_config(TIERS["smol"], policy, TIERS, "ml")
    assert config["classifier"] == {
        "path": "/etc/shoal/classifier/model.json", "learnedPath": "/etc/shoal/classifier/learned/model.json",
        "confidenceThreshold": 0.6, "targetShares": {"small": 0.8},
    }
    assert RouterConfig.model_validate(config).classifier.target_shares == {"small": 0.8}
