"""Build the control plane's binaries from their Go modules, once, into a cache.

There is no download site and no container engine on the machines Shoal is developed on,
but the Go module proxy is reachable. So kube-apiserver, kube-controller-manager and
kube-scheduler are built from ``k8s.io/kubernetes``, etcd from ``go.etcd.io/etcd/server/v3``
and kwok from ``sigs.k8s.io/kwok``, with the ordinary ``go`` client.

``go install k8s.io/kubernetes/cmd/...@vX`` cannot work: k8s.io/kubernetes requires its
staging modules (k8s.io/api, k8s.io/client-go, ...) at ``v0.0.0`` and replaces them with
``./staging/...`` directories, and Go ignores a dependency's replace directives. The fix
(the pattern kubernetes-sigs/scheduler-plugins uses) is a small wrapper module of our own
that replaces every staging module with its published ``v0.<minor>.<patch>``. The list of
staging modules changes between releases, so the wrapper's go.mod is generated from that
exact release's go.mod at build time (:func:`kubernetes_wrapper_go_mod`).

Binaries live outside the repository, in ``<cache>/bin/<component>-<version>/``. A set is
built into a temporary directory and renamed into place, so a half-finished build is
never mistaken for a finished one; a lock file serialises concurrent builders.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# Pinned versions. Kubernetes 1.34 is paired with etcd 3.6 (controller-runtime's envtest
# matrix pairs 1.34 with etcd 3.6.4; this is the newest 3.6 patch on the proxy).
KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
# kwok's newest tag whose go.mod `go` directive (1.26.0) this toolchain satisfies; its
# main branch needs a newer Go.
KWOK_VERSION = "v0.8.0"

KUBERNETES_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")

Progress = Callable[[str], None]


class BuildError(Exception):
    """A binary could not be built; the message is one line a person can act on."""


class GoNotFound(BuildError):
    """No Go toolchain on PATH: install Go (1.24 or newer) or put it on PATH."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Paths of every control-plane binary, all built and executable."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_stages: Path


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$SHOAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/shoal``, else ``~/.cache/shoal``."""
    env = os.environ if environ is None else environ
    if env.get("SHOAL_CACHE_DIR"):
        return Path(env["SHOAL_CACHE_DIR"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base).expanduser() / "shoal"


# ---------------------------------------------------------------------------------------
# Pure: the wrapper modules.

_STAGING_REPLACE = re.compile(r"^\s*(?:replace\s+)?(k8s\.io/[\w./-]+)\s+=>\s+\./staging/\S+\s*$")
_GO_DIRECTIVE = re.compile(r"^go\s+(\d+\.\d+(?:\.\d+)?)\s*$")
_GODEBUG = re.compile(r"^godebug\s+.+$")


def staging_modules(upstream_go_mod: str) -> list[str]:
    """The modules that k8s.io/kubernetes' go.mod replaces with ``./staging/...`` paths.

    Both the block form (``replace ( ... )``) and single-line ``replace`` directives are
    recognised. The order of the go.mod is kept.
    """
    modules = []
    for line in upstream_go_mod.splitlines():
        match = _STAGING_REPLACE.match(line)
        if match:
            modules.append(match.group(1))
    return modules


def staging_version(kubernetes_version: str) -> str:
    """Staging modules are published as ``v0.<minor>.<patch>`` for ``v1.<minor>.<patch>``."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", kubernetes_version)
    if not match:
        raise ValueError(f"not a Kubernetes release version: {kubernetes_version!r}")
    return f"v0.{match.group(1)}.{match.group(2)}"


def kubernetes_wrapper_go_mod(upstream_go_mod: str, kubernetes_version: str) -> str:
    """The go.mod of a wrapper module that can build k8s.io/kubernetes' commands.

    It requires ``k8s.io/kubernetes`` at ``kubernetes_version``, replaces every staging
    module with its published version, and copies upstream's ``go`` and ``godebug``
    directives so the binaries behave as upstream's do.
    """
    modules = staging_modules(upstream_go_mod)
    if not modules:
        raise ValueError("the upstream go.mod has no ./staging replace directives")
    go_version = "1.24.0"
    godebug = []
    for line in upstream_go_mod.splitlines():
        if match := _GO_DIRECTIVE.match(line.strip()):
            go_version = match.group(1)
        elif _GODEBUG.match(line.strip()):
            godebug.append(line.strip())
    published = staging_version(kubernetes_version)
    width = max(len(m) for m in modules)
    lines = [
        "// Generated by shoal.devcluster.build; do not edit.",
        "module shoal.local/kubernetes-build",
        "",
        f"go {go_version}",
        "",
        *godebug,
        *([""] if godebug else []),
        f"require k8s.io/kubernetes {kubernetes_version}",
        "",
        "replace (",
        *(f"\t{m:<{width}} => {m} {published}" for m in modules),
        ")",
        "",
    ]
    return "\n".join(lines)


def tools_go(module_packages: list[str]) -> str:
    """A ``tools`` build-tagged file that keeps ``packages`` in the wrapper's module graph."""
    imports = "\n".join(f'\t_ "{p}"' for p in module_packages)
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"


def etcd_wrapper_go_mod(etcd_version: str) -> str:
    """The go.mod of the wrapper module for etcd (kept apart from Kubernetes' versions)."""
    return (
        "// Generated by shoal.devcluster.build; do not edit.\n"
        "module shoal.local/etcd-build\n\n"
        "go 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 {etcd_version}\n"
    )


def kubernetes_ldflags(kubernetes_version: str, build_date: str) -> str:
    """Stamp the version, or the binaries report a ``v0.0.0-master`` placeholder."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", kubernetes_version)
    if not match:
        raise ValueError(f"not a Kubernetes release version: {kubernetes_version!r}")
    values = {
        "gitVersion": kubernetes_version,
        "gitMajor": match.group(1),
        "gitMinor": match.group(2),
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


# ---------------------------------------------------------------------------------------
# I/O: running go.


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _go_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["CGO_ENABLED"] = "0"
    # Never fetch another toolchain: use the one installed, or fail clearly.
    env["GOTOOLCHAIN"] = "local"
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    return env


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise GoNotFound(
            "no Go toolchain on PATH: the control plane is built from Go modules; "
            "install Go 1.24 or newer and retry"
        )
    return go


def _run(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    what: str,
    progress: Progress,
    heartbeat_s: float = 60.0,
) -> str:
    """Run a step under ``nice``, logging to ``log``; say every minute that it is alive."""
    started = time.monotonic()
    nice = shutil.which("nice")
    command = [nice, "-n", "10", *argv] if nice else argv
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        with subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                              stderr=out) as proc:
            assert proc.stdout is not None
            chunks: list[bytes] = []
            os.set_blocking(proc.stdout.fileno(), False)
            next_beat = started + heartbeat_s
            while True:
                data = proc.stdout.read()
                if data:
                    chunks.append(data)
                if proc.poll() is not None:
                    rest = proc.stdout.read()
                    if rest:
                        chunks.append(rest)
                    break
                if time.monotonic() >= next_beat:
                    progress(f"  ... still {what} ({_elapsed(started)})")
                    next_beat += heartbeat_s
                time.sleep(0.5)
    stdout = b"".join(chunks).decode(errors="replace")
    if proc.returncode != 0:
        for line in log.read_text(errors="replace").splitlines()[-15:]:
            progress(f"  | {line}")
        raise BuildError(f"{what} failed (exit {proc.returncode}); the full log is {log}")
    return stdout


def _elapsed(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 60}m{seconds % 60:02d}s"


class FileLock:
    """An exclusive file lock, so two builders never build the same set at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _install_set(
    cache: Path,
    name: str,
    names: tuple[str, ...],
    build: Callable[[Path, Path], None],
) -> Path:
    """Build binaries ``names`` into ``<cache>/bin/<name>/`` unless they are all there.

    ``build(out_dir, work_dir)`` writes the binaries into ``out_dir``; the directory is
    renamed into place only when every binary exists.
    """
    bin_root = cache / "bin"
    final = bin_root / name
    if all((final / n).is_file() for n in names):
        return final
    with FileLock(bin_root / f".{name}.lock"):
        if all((final / n).is_file() for n in names):
            return final  # another builder finished while we waited
        work = cache / "build" / name
        work.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=bin_root))
        try:
            build(staging, work)
            missing = [n for n in names if not (staging / n).is_file()]
            if missing:
                raise BuildError(f"build of {name} produced no {', '.join(missing)}")
            staging.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return final


def build_kubernetes(
    cache: Path, version: str = KUBERNETES_VERSION, progress: Progress = stderr_progress
) -> Path:
    """kube-apiserver, kube-controller-manager and kube-scheduler at ``version``."""

    def build(out: Path, work: Path) -> None:
        go = _go()
        env = _go_env()
        log = work / "build.log"
        started = time.monotonic()
        progress(
            f"building {', '.join(KUBERNETES_COMPONENTS)} {version} from Go modules; "
            f"a first build takes about 6 minutes on 2 idle cores, more on a busy machine "
            f"(log: {log})"
        )
        info = json.loads(
            _run([go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                 cwd=work, env=env, log=log, what="downloading k8s.io/kubernetes",
                 progress=progress)
        )
        upstream = Path(info["GoMod"]).read_text()
        (work / "go.mod").write_text(kubernetes_wrapper_go_mod(upstream, version))
        (work / "go.sum").unlink(missing_ok=True)
        packages = [f"k8s.io/kubernetes/cmd/{c}" for c in KUBERNETES_COMPONENTS]
        (work / "tools.go").write_text(tools_go(packages))
        _run([go, "mod", "tidy"], cwd=work, env=env, log=log,
             what="resolving Kubernetes' module graph", progress=progress)
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _run([go, "build", "-trimpath", "-ldflags", kubernetes_ldflags(version, date),
              "-o", f"{out}{os.sep}", *packages],
             cwd=work, env=env, log=log, what=f"compiling Kubernetes {version}",
             progress=progress)
        progress(f"built Kubernetes {version} in {_elapsed(started)}")

    return _install_set(cache, f"kubernetes-{version}", KUBERNETES_COMPONENTS, build)


def build_etcd(
    cache: Path, version: str = ETCD_VERSION, progress: Progress = stderr_progress
) -> Path:
    """etcd at ``version`` from a wrapper module of its own."""

    def build(out: Path, work: Path) -> None:
        go = _go()
        env = _go_env()
        log = work / "build.log"
        started = time.monotonic()
        progress(f"building etcd {version} from Go modules; a first build takes about a minute "
                 f"(log: {log})")
        (work / "go.mod").write_text(etcd_wrapper_go_mod(version))
        (work / "go.sum").unlink(missing_ok=True)
        (work / "tools.go").write_text(tools_go(["go.etcd.io/etcd/server/v3"]))
        _run([go, "mod", "tidy"], cwd=work, env=env, log=log,
             what="resolving etcd's module graph", progress=progress)
        _run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"),
              "go.etcd.io/etcd/server/v3"],
             cwd=work, env=env, log=log, what=f"compiling etcd {version}", progress=progress)
        progress(f"built etcd {version} in {_elapsed(started)}")

    return _install_set(cache, f"etcd-{version}", ("etcd",), build)


# The Stages kwokctl configures by default (nodes initialise and heartbeat with a Lease;
# bound pods become Ready, Job pods complete, deleted pods go away). The kwok binary has no
# built-in stages: they are read from its module at build time, so they match its version.
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
KWOK_STAGES = "stages.yaml"


def kwok_stages(module_dir: Path) -> str:
    """One YAML stream of kwok's default Stages, read from its module directory."""
    documents = []
    for name in KWOK_STAGE_FILES:
        path = module_dir / name
        if not path.is_file():
            raise BuildError(f"kwok's module has no {name}; its stage layout changed")
        documents.append(path.read_text().strip())
    return "\n---\n".join(documents) + "\n"


def build_kwok(
    cache: Path, version: str = KWOK_VERSION, progress: Progress = stderr_progress
) -> Path:
    """kwok at ``version`` and its default Stages; go install works (no replaces)."""

    def build(out: Path, work: Path) -> None:
        go = _go()
        env = _go_env()
        env["GOBIN"] = str(out)
        env["GOFLAGS"] = "-buildvcs=false"
        log = work / "build.log"
        started = time.monotonic()
        progress(f"building kwok {version} from Go modules (log: {log})")
        _run([go, "install", "-trimpath", "-ldflags", "-s -w",
              f"sigs.k8s.io/kwok/cmd/kwok@{version}"],
             cwd=work, env=env, log=log, what=f"compiling kwok {version}", progress=progress)
        info = json.loads(
            _run([go, "mod", "download", "-json", f"sigs.k8s.io/kwok@{version}"],
                 cwd=work, env=env, log=log, what="downloading kwok's module", progress=progress)
        )
        (out / KWOK_STAGES).write_text(kwok_stages(Path(info["Dir"])))
        progress(f"built kwok {version} in {_elapsed(started)}")

    return _install_set(cache, f"kwok-{version}", ("kwok", KWOK_STAGES), build)


def ensure_binaries(cache: Path | None = None, progress: Progress = stderr_progress) -> Binaries:
    """Every control-plane binary, building whatever is missing (slow the first time)."""
    cache = cache_dir() if cache is None else cache
    etcd = build_etcd(cache, progress=progress)
    kwok = build_kwok(cache, progress=progress)
    kube = build_kubernetes(cache, progress=progress)
    return Binaries(
        etcd=etcd / "etcd",
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        kwok=kwok / "kwok",
        kwok_stages=kwok / KWOK_STAGES,
    )


if __name__ == "__main__":
    try:
        found = ensure_binaries()
    except BuildError as error:
        print(f"shoal: {error}", file=sys.stderr)
        sys.exit(1)
    for field in dataclasses.fields(found):
        print(f"{field.name}: {getattr(found, field.name)}")
