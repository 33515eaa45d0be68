"""What the dev cluster runs for a simulated pod, from the pod spec the operator renders."""

import base64
import json
from pathlib import Path

import pytest
import yaml

from shoal.api.modeltier import ModelTier
from shoal.cli import _read_documents, render_documents
from shoal.devcluster.engines import parse_engines
from shoal.devcluster.podrun import CannotRun, Objects, Rewriter, plan_pod
from shoal.render.evaljob import EvalJobContext, render_eval_job

ROOT = Path(__file__).resolve().parents[2]
IP = "127.50.0.7"
ENGINES = parse_engines("engines:\n- {name: s, kind: smollm2}\n- {name: f, kind: fake, match: {}, fake: {latencyMs: 5}}\n")
SMOLLM2, FAKE = ENGINES


def _service_url(namespace, name):
    return {("default", "large"): "http://127.0.0.1:41001", ("default", "small"): "http://127.0.0.1:41002"}[(namespace, name)]


def _examples():
    docs = _read_documents([str(ROOT / "examples")])
    manifests = render_documents(docs, "default")
    config_maps = {("default", m["metadata"]["name"]): m["data"] for m in manifests if m["kind"] == "ConfigMap"}
    config_maps.update({("default", d["metadata"]["name"]): d["data"] for _, d in docs if d["kind"] == "ConfigMap"})
    secrets = {("default", d["metadata"]["name"]): {k: base64.b64encode(v.encode()).decode() for k, v in d["stringData"].items()}
               for _, d in docs if d["kind"] == "Secret"}
    return manifests, docs, Objects(config_maps, secrets)


def _pod(template, name, uid="u1"):
    return {"metadata": {"name": name, "namespace": "default", "uid": uid, "labels": template["metadata"]["labels"]},
            "spec": template["spec"], "status": {"phase": "Running", "podIP": IP}}


def _serving_pod(manifests, tier):
    deployment = next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == tier)
    return _pod(deployment["spec"]["template"], f"{tier}-abc")


def test_serving_pod_runs_its_router_container_and_the_engine_on_the_pod_ip(tmp_path):
    manifests, _, objects = _examples()
    plan = plan_pod(_serving_pod(manifests, "small"), objects, engine=SMOLLM2, workdir=tmp_path, service_url=_service_url, python="py")
    engine, router = plan.processes
    assert engine.argv == ["py", "-m", "shoal.devcluster.engines.llama", "--host", IP, "--port", "8000", "--model-alias", "support-8b"]
    config = tmp_path / "volumes" / "router-config" / "router.json"
    assert router.argv == ["py", "-m", "shoal.cli", "router", "--config", str(config), "--port", "8080", "--host", IP]
    written = json.loads(plan.files[config][0])
    tiers = {t["name"]: t for t in written["tiers"]}
    # The pod's own engine is at the pod's IP, a peer tier at its local forwarder, the frontier unchanged.
    assert tiers["small"]["url"] == f"http://{IP}:8000/v1"
    assert tiers["large"]["url"] == "http://127.0.0.1:41001/v1"
    assert tiers["frontier"]["url"] == "https://api.openai.com/v1"
    assert written["engine"]["metricsUrl"] == f"http://{IP}:8000/metrics"
    key_file = tmp_path / "volumes" / "secret-frontier-api" / "api-key"
    assert tiers["frontier"]["apiKeyFile"] == str(key_file)
    assert plan.files[key_file] == (b"replace-me", 0o400)
    # The API key is a file only: never in the configuration, the arguments or the environment.
    assert b"replace-me" not in plan.files[config][0]
    assert "replace-me" not in json.dumps([p.argv for p in plan.processes] + [p.env for p in plan.processes])


def test_a_gpu_tier_gets_the_fake_engine_with_its_served_model_name(tmp_path):
    manifests, _, objects = _examples()
    plan = plan_pod(_serving_pod(manifests, "large"), objects, engine=FAKE, workdir=tmp_path, service_url=_service_url, python="py")
    assert plan.processes[0].argv == ["py", "-m", "shoal.devcluster.engines.fake", "--host", IP, "--port", "8000",
                                      "--model", "support-70b", "--name", "large", "--latency-ms", "5"]


def test_a_fake_engine_answers_with_the_checkpoint_of_the_pods_template(tmp_path):
    manifests, _, objects = _examples()
    (engine,) = parse_engines("engines:\n- {name: f, kind: fake, fake: {reply: 'Answer of {checkpoint}.'}}\n")
    pod = _serving_pod(manifests, "small")
    plan = plan_pod(pod, objects, engine=engine, workdir=tmp_path, service_url=_service_url, python="py")
    engine_process, router = plan.processes
    assert router.env["SHOAL_SERVING_CHECKPOINT"] == "s3://acme-models/support-8b/ckpt-0042"
    assert engine_process.argv[-2:] == ["--reply", "Answer of s3://acme-models/support-8b/ckpt-0042."]


def test_a_pod_whose_secret_is_missing_cannot_run_and_says_which(tmp_path):
    manifests, _, objects = _examples()
    without = Objects(objects.config_maps, {})
    with pytest.raises(CannotRun, match="Secret default/frontier-api"):
        plan_pod(_serving_pod(manifests, "small"), without, engine=SMOLLM2, workdir=tmp_path, service_url=_service_url)
    with pytest.raises(CannotRun, match="no engine .* tier small"):
        plan_pod(_serving_pod(manifests, "small"), objects, engine=None, workdir=tmp_path, service_url=_service_url)


def test_evaluation_pod_runs_shoal_eval_with_the_tiers_engine_in_place_of_vllm(tmp_path):
    _, docs, objects = _examples()
    body = next(d for _, d in docs if d["kind"] == "ModelTier" and d["metadata"]["name"] == "small")
    tier = ModelTier.from_body({**body, "metadata": {**body["metadata"], "namespace": "default"}})
    job = render_eval_job(tier, EvalJobContext(checkpoint="s3://acme-models/support-8b/ckpt-0043",
                                               serving_checkpoint="s3://acme-models/support-8b/ckpt-0042"))
    plan = plan_pod(_pod(job["spec"]["template"], "small-eval-x"), objects, engine=SMOLLM2, workdir=tmp_path,
                    service_url=_service_url, python="py")
    (process,) = plan.processes
    argv = process.argv
    assert argv[:4] == ["py", "-m", "shoal.cli", "eval"]
    assert argv[argv.index("--baseline-endpoint") + 1] == "http://127.0.0.1:41002/v1"
    dataset = tmp_path / "volumes" / "dataset" / "items.jsonl"
    assert argv[argv.index("--dataset") + 1] == str(dataset)
    assert plan.files[dataset][0].startswith(b'{"id": "refund-1"')
    assert argv[argv.index("--engine-port") + 1] == "0"
    assert argv[argv.index("--termination-log") + 1] == str(tmp_path / "termination-log") == str(plan.termination_log)
    assert json.loads(argv[argv.index("--engine-command") + 1]) == [
        "py", "-m", "shoal.devcluster.engines.llama", "--host", "127.0.0.1", "--port", "{port}", "--model-alias", "{model}"]
    assert json.loads(process.env["SHOAL_EVAL_SPEC"])["thresholds"] == [{"metric": "exact_match", "min": 0.8}]
    # Paths inside the pod's emptyDirs land in the pod's work directory.
    assert process.env["HOME"] == str(tmp_path / "volumes" / "tmp" / "home")


@pytest.mark.parametrize("value, expected", [
    ("http://localhost:8000/v1", f"http://{IP}:8000/v1"),
    ("http://small.default.svc.cluster.local:80/v1/models", "http://127.0.0.1:41002/v1/models"),
    ("https://api.example.com/v1", "https://api.example.com/v1"),
    ("/etc/shoal/router/router.json", "/w/cfg/router.json"),
    ("/etc/shoal/routerx", "/etc/shoal/routerx"),
    ("plain text", "plain text"),
])
def test_rewriter_maps_pod_paths_and_cluster_urls_only(value, expected):
    rewrite = Rewriter(IP, {"/etc/shoal/router": Path("/w/cfg")}, _service_url)
    assert rewrite(value) == expected
