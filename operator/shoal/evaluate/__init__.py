"""``shoal eval``: the evaluation Job's program (datasets, scorers, statistics, verdict).

What it does
    Loads a JSON Lines dataset (``dataset.py``), sends every item to the candidate
    through an OpenAI-compatible API with bounded concurrency (``runner.py``), scores the
    responses (``scorers.py``; the LLM judge in ``runner.py``), computes confidence
    intervals (``stats.py``) and judges the thresholds and, with ``baseline: serving``,
    the paired regression against the serving checkpoint on the same items
    (``verdict.py``, a pure function the gate study in benchmarks/eval-gate also runs).

With ``--sequential`` the comparison is looked at after 25, 50, 75 and 100 % of the items
(``sequential.py``) and the run stops as soon as the verdict is clear.

The candidate is either an endpoint that already serves it (``--endpoint URL --model
NAME``) or a vLLM engine the program starts inside its own pod on loopback
(``--serve-checkpoint URI``; ``engine.py``), which is how the evaluation Job runs.

Inputs
    The evaluation settings are the ModelTier's ``spec.rollout.evaluation`` object as
    JSON, from ``--spec FILE`` or the ``SHOAL_EVAL_SPEC`` environment variable, validated
    by ``api.modeltier.EvaluationSpec``. A dataset given as a ConfigMap key is mounted by
    the Job and passed with ``--dataset FILE``; an http(s) URI is fetched. API keys come
    from ``SHOAL_EVAL_API_KEY`` (candidate and baseline) and ``SHOAL_JUDGE_API_KEY``.

Outputs and exit codes
    - stdout: a table with every metric, its interval, the serving checkpoint's value and
      the paired difference's interval, then the verdict and why.
    - the termination message (``--termination-log``, else ``SHOAL_TERMINATION_LOG``,
      else ``/dev/termination-log``): a compact ``EvaluationRecord`` as camelCase JSON,
      at most 4096 bytes, with ``verdict`` one of Passed, Failed, JobError, TimedOut.
    - exit code 0 when the candidate passed, 1 when it failed a threshold or regressed,
      2 when no verdict could be reached (bad settings or dataset, unreachable endpoint,
      an engine that did not start, too many failed requests, the timeout).

Using it from Argo Rollouts
    Argo Rollouts' Job metric provider counts a Job that completes with exit code 0 as a
    successful measurement and any other outcome as a failed one, which is this
    program's contract. An AnalysisTemplate metric runs it against the canary's Service::

        metrics:
          - name: eval-gate
            provider:
              job:
                spec:
                  backoffLimit: 0
                  activeDeadlineSeconds: 3600
                  template:
                    spec:
                      restartPolicy: Never
                      containers:
                        - name: eval
                          image: ghcr.io/shoal-dev/shoal-eval:0.1.0
                          args: [eval, --spec, /etc/shoal/spec/evaluation.json,
                                 --dataset, /etc/shoal/dataset/items.jsonl,
                                 --endpoint, "http://{{args.canary-service}}/v1",
                                 --model, "{{args.model}}",
                                 --baseline-endpoint, "http://{{args.stable-service}}/v1",
                                 --baseline-model, "{{args.model}}"]
                          volumeMounts: [...]   # the two ConfigMaps

    Argo Rollouts does not tell exit 1 from exit 2: both fail the analysis and abort the
    rollout, which is the safe reading of "no verdict". The termination message keeps
    the difference for whoever reads the Job's pod (``kubectl get pod -o
    jsonpath='{.status.containerStatuses[0].state.terminated.message}'``).
"""
