"""The images `make images` produces are the ones the chart and the operator refer to."""

import subprocess
from pathlib import Path

import yaml

from shoal.api.modeltier import DEFAULT_EVAL_IMAGE, DEFAULT_ROUTER_IMAGE
from shoal.devcluster.install import render_chart
from shoal.devcluster.tools import ensure_tools

ROOT = Path(__file__).resolve().parents[2]


def _make_image_refs() -> list[str]:
    result = subprocess.run(["make", "-s", "image-refs"], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_make_images_tags_match_the_charts_operator_image_and_the_default_router_and_eval_images():
    operator, router, eval_ = _make_image_refs()
    deployment = next(o for o in render_chart(ensure_tools()) if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == operator
    assert router == DEFAULT_ROUTER_IMAGE
    assert eval_ == DEFAULT_EVAL_IMAGE


def test_images_are_tagged_with_the_charts_version():
    chart = yaml.safe_load((ROOT / "charts" / "shoal" / "Chart.yaml").read_text())
    assert {ref.rsplit(":", 1)[1] for ref in _make_image_refs()} == {chart["version"]}
