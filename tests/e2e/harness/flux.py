"""Flux's own controllers (source-, kustomize- and helm-controller) as local processes against a cluster.

The binaries and their CRDs come from hack/flux/build.sh (built once from the Go module proxy, cached under
~/.cache) or from $CDI_FLUX_ASSETS. Each controller runs with the admin kubeconfig (Flux reads $KUBECONFIG; it has
no flag for it), loopback metrics and health ports, and source-controller serves its artifacts on loopback, which
is also the address it advertises to the other two.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from kubernetes import client

from . import procs
from .controlplane import REPO_ROOT, _http_ok, free_port
from .helpers import apply_crds

BUILD_SCRIPT = REPO_ROOT / "hack" / "flux" / "build.sh"
ASSETS_ENV = "CDI_FLUX_ASSETS"
CONTROLLERS = ("source-controller", "kustomize-controller", "helm-controller")
NAMESPACE = "flux-system"
FIELD_MANAGER = "cdi-e2e-flux"


class FluxError(RuntimeError):
    pass


def flux_assets() -> Path:
    """$CDI_FLUX_ASSETS, else the build script's cache (instant when built; CI runs the script before pytest)."""
    assets = os.environ.get(ASSETS_ENV)
    if not assets:
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FluxError(f"{BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        assets = result.stdout.strip().splitlines()[-1]
    path = Path(assets)
    missing = [c for c in CONTROLLERS if not os.access(path / c, os.X_OK)]
    if missing or not (path / "crds").is_dir():
        raise FluxError(f"{path} lacks {missing or 'crds/'}; run: export {ASSETS_ENV}=$(bash {BUILD_SCRIPT} | tail -1)")
    return path


@dataclass
class Controller:
    name: str
    argv: list[str]
    log: Path
    health: str
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Flux:
    """The three controllers, started once their CRDs are Established; stopped on exit."""

    api: client.ApiClient
    kubeconfig: Path
    work_dir: Path
    controllers: list[Controller] = field(default_factory=list)

    def __enter__(self) -> Flux:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        assets = flux_assets()
        apply_crds(self.api, sorted((assets / "crds").glob("*.yaml")), FIELD_MANAGER)
        core = client.CoreV1Api(self.api)
        if not any(n.metadata.name == NAMESPACE for n in core.list_namespace().items):
            core.create_namespace({"metadata": {"name": NAMESPACE}})
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "CDI_"))},
            "KUBECONFIG": str(self.kubeconfig),
            "RUNTIME_NAMESPACE": NAMESPACE,
            "HOME": str(self.work_dir),
        }
        storage = f"127.0.0.1:{free_port()}"
        (self.work_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        extra = {
            "source-controller": [
                f"--storage-path={self.work_dir / 'artifacts'}",
                f"--storage-addr={storage}",
                f"--storage-adv-addr={storage}",
            ],
        }
        for name in CONTROLLERS:
            health = f"127.0.0.1:{free_port()}"
            argv = [
                str(assets / name),
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-addr={health}",
                "--watch-all-namespaces=true",
                # A dependsOn chain is re-checked every 2 s instead of 30 s.
                "--requeue-dependency=2s",
                "--log-encoding=console",
                *extra.get(name, []),
            ]
            controller = Controller(name, argv, self.work_dir / f"{name}.log", health)
            controller.proc = procs.spawn(argv, controller.log, env=env, cwd=self.work_dir)
            self.controllers.append(controller)
        for controller in self.controllers:
            procs.wait_for(
                partial(self._ready, controller),
                120,
                f"{controller.name} /readyz",
                details=partial(procs.tail, controller.log),
            )

    def _ready(self, controller: Controller) -> bool:
        if not controller.alive():
            raise FluxError(f"{controller.name} exited; last lines of {controller.log}:\n{procs.tail(controller.log)}")
        return _http_ok(controller.health, "/readyz")

    def stop(self) -> None:
        for controller in reversed(self.controllers):
            if controller.proc is not None:
                procs.stop(controller.proc)
        self.controllers.clear()

    def logs(self, lines: int = 30) -> str:
        return "\n".join(f"==> {c.log} <==\n{procs.tail(c.log, lines)}" for c in self.controllers)
