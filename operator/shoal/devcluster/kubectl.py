"""A small wrapper around the real kubectl binary, used by `shoal dev` and the e2e tests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class KubectlError(Exception):
    """kubectl exited non-zero; ``stderr`` says why (the apiserver's message included)."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.command = list(args)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"kubectl {' '.join(args)} failed (exit {returncode}): {stderr.strip()}")


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path, env: Mapping[str, str] | None = None):
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.env = dict(env) if env is not None else None

    def run(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        """Run kubectl with ``args``; its stdout, or :class:`KubectlError` with stderr."""
        argv = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True,
                                timeout=timeout, env=self.env, check=False)
        if result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stderr)
        return result.stdout

    def json(self, *args: str, input: str | None = None) -> Any:
        """Run kubectl with ``-o json`` and parse the output."""
        return json.loads(self.run(*args, "-o", "json", input=input))

    def apply(self, objects: Iterable[Mapping[str, Any]], *extra: str) -> str:
        """Server-side apply ``objects`` as one YAML stream."""
        text = yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False)
        return self.run("apply", "--server-side", "--force-conflicts",
                        "--field-manager=shoal-dev", "-f", "-", *extra, input=text)

    def apply_files(self, paths: Iterable[Path], *extra: str) -> str:
        args: list[str] = []
        for path in paths:
            args += ["-f", str(path)]
        return self.run("apply", *args, *extra)
