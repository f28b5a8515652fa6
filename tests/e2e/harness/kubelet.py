"""A "local kubelet" for the e2e tests: runs Pods' containers as local processes.

No kubelet can run containers on the test machine, so this stands in for one node and the scheduler:

- registers a Ready Node and binds every unscheduled Pod (default scheduler) to it;
- runs each container's ``command`` + ``args`` as a local process (the image is ignored; a container without a
  command uses ``image_entrypoints[image]`` or ``default_entrypoint``), init containers first, one by one;
- builds the environment from ``env`` (``value`` with ``$(VAR)`` expansion, ``secretKeyRef``,
  ``configMapKeyRef``, ``fieldRef``) and ``envFrom``, on top of a clean base: PATH (with the venv's bin
  first), HOME (a per-pod directory), HOSTNAME, KUBERNETES_SERVICE_HOST/PORT pointing at the test apiserver;
- projects a service-account token (TokenRequest, bound to the Pod), ``ca.crt`` and ``namespace`` into a
  per-pod directory and sets ``CDI_SERVICEACCOUNT_DIR`` to it, because a local process cannot be given its
  own /var/run/secrets/kubernetes.io/serviceaccount. The runner reads its in-cluster credentials from there;
- reports phase, conditions and container statuses (running, terminated with exit code) back;
  restartPolicy OnFailure/Always restarts the container with a short back-off and counts restartCount;
- on deletion kills the processes (SIGTERM, then SIGKILL after the grace period, at most ``max_grace``) and
  completes the graceful deletion like a kubelet does;
- keeps each container's stdout and stderr in ``<work_dir>/<namespace>_<pod>_<uid>/<container>.log``
  (see ``logs()``), also after the Pod is gone.

- mounts ``secret``, ``configMap`` and ``emptyDir`` volumes as per-pod directories and rewrites env values that
  name a path under a mountPath to that directory (a local process cannot see the mountPath itself);

Not supported: other volumes, subPath, probes, resource limits, pod-level
activeDeadlineSeconds (the Job controller enforces the Job's own deadline), ephemeral and sidecar containers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client import ApiException

from . import procs

log = logging.getLogger("cdi.e2e.kubelet")

NODE_NAME = "cdi-local-kubelet"
LOCAL_IP = "127.0.0.1"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ConfigError(Exception):
    """The container cannot start yet (a missing Secret key, ServiceAccount, ...); retried like a kubelet."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, $$ escapes, unknown references stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": LOCAL_IP,
        "status.hostIPs": LOCAL_IP,
        "status.podIP": LOCAL_IP,
        "status.podIPs": LOCAL_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    m = _FIELD_KEY.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ConfigError(f"fieldRef {path!r} is not supported by the local kubelet")


@dataclass
class ContainerRun:
    spec: dict[str, Any]
    init: bool
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    restart_count: int = 0
    restart_at: float | None = None
    last_terminated: dict[str, Any] | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def state(self) -> dict[str, Any]:
        if self.proc is not None and self.exit_code is None:
            return {"running": {"startedAt": self.started_at}}
        if self.exit_code is not None and self.restart_at is None:
            return {"terminated": self.terminated()}
        reason, message = self.waiting or ("ContainerCreating", "")
        return {"waiting": {"reason": reason, "message": message} if message else {"reason": reason}}

    def terminated(self) -> dict[str, Any]:
        assert self.exit_code is not None
        return {
            "exitCode": self.exit_code,
            "reason": "Completed" if self.exit_code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "containerID": f"local://{self.proc.pid if self.proc else 0}",
        }

    def status(self) -> dict[str, Any]:
        running = self.proc is not None and self.exit_code is None
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": running and not self.init,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state(),
        }
        if self.proc is not None:
            status["containerID"] = f"local://{self.proc.pid}"
        if self.last_terminated:
            status["lastState"] = {"terminated": self.last_terminated}
        return status


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    dir: Path
    pod: dict[str, Any]
    init: list[ContainerRun]
    main: list[ContainerRun]
    start_time: str = field(default_factory=now_iso)
    base_env: dict[str, str] | None = None
    retry_at: float | None = None
    phase: str = "Pending"
    deleted: bool = False

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    def all(self) -> list[ContainerRun]:
        return self.init + self.main


@dataclass
class KubeletConfig:
    """Where in-pod clients find the apiserver, and what to run for images without a command."""

    api_host: str
    api_port: int
    ca_cert: Path
    work_dir: Path
    node_name: str = NODE_NAME
    extra_path: tuple[str, ...] = (str(Path(sys.executable).parent),)
    image_entrypoints: dict[str, list[str]] = field(default_factory=dict)
    # For a container without a command whose image is not in image_entrypoints (our image's is `cdi`).
    default_entrypoint: tuple[str, ...] = ()
    max_grace: float = 5.0
    token_seconds: int = 3600


class LocalKubelet:
    """Runs in two daemon threads (watch, worker); start() and stop() from the test thread."""

    def __init__(self, api: client.ApiClient, config: KubeletConfig) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.config = config
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._threads: list[threading.Thread] = []
        self._pods: dict[str, PodRun] = {}
        self._by_name: dict[tuple[str, str], PodRun] = {}
        self._index_lock = threading.Lock()
        self._bound: set[str] = set()
        self._finalized: set[str] = set()
        self.errors: list[str] = []

    # --- public API for tests ---------------------------------------------------------------------------

    def start(self) -> LocalKubelet:
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        for target, name in ((self._watch_loop, "watch"), (self._work_loop, "worker")):
            t = threading.Thread(target=target, name=f"local-kubelet-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        for t in self._threads:
            t.join(timeout=15)
        with self._index_lock:
            runs = list(self._pods.values())
        for run in runs:
            for c in run.all():
                if c.proc is not None:
                    procs.stop(c.proc, grace=1.0)
        with contextlib.suppress(ApiException, OSError):
            self.core.delete_node(self.config.node_name)

    def pod_dir(self, namespace: str, name: str) -> Path:
        with self._index_lock:
            run = self._by_name.get((namespace, name))
        if run is None:
            raise KeyError(f"the local kubelet has not run pod {namespace}/{name}")
        return run.dir

    def log_path(self, namespace: str, name: str, container: str | None = None) -> Path:
        with self._index_lock:
            run = self._by_name.get((namespace, name))
        if run is None:
            raise KeyError(f"the local kubelet has not run pod {namespace}/{name}")
        containers = run.main if container is None else [c for c in run.all() if c.name == container]
        if not containers:
            raise KeyError(f"pod {namespace}/{name} has no container {container!r}")
        return containers[0].log

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """stdout+stderr of a container (the first one by default), from all its restarts."""
        path = self.log_path(namespace, name, container)
        return path.read_text(errors="replace") if path.exists() else ""

    def pods(self) -> list[tuple[str, str]]:
        with self._index_lock:
            return list(self._by_name)

    # --- node --------------------------------------------------------------------------------------------

    def _register_node(self) -> None:
        name = self.config.node_name
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "cdi.ingest.dev/local-kubelet": "true",
                },
            },
        }
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
        resources = {"cpu": "8", "memory": "32Gi", "pods": "250", "ephemeral-storage": "100Gi"}
        ts = now_iso()
        status = {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": LOCAL_IP}, {"type": "Hostname", "address": name}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "local kubelet for the cdi-operator e2e tests",
                    "lastHeartbeatTime": ts,
                    "lastTransitionTime": ts,
                }
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "local",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "local://processes",
                "osImage": "local",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.core.patch_node_status(name, {"status": status})

    # --- threads -----------------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    listed = self.api.sanitize_for_serialization(self.core.list_pod_for_all_namespaces())
                    resource_version = listed["metadata"]["resourceVersion"]
                    self._events.put(("resync", listed["items"]))
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=resource_version,
                    timeout_seconds=10,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        resource_version = None
                        break
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._events.put((event["type"], obj))
                    if self._stopping.is_set():
                        break
            except ApiException as e:
                if e.status == 410:
                    resource_version = None
                else:
                    self._error(f"watch: {e}")
                    time.sleep(1)
            except Exception as e:  # the watch must survive transient connection errors
                if not self._stopping.is_set():
                    self._error(f"watch: {e!r}")
                    time.sleep(1)

    def _work_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                kind, payload = self._events.get(timeout=0.2)
            except queue.Empty:
                kind, payload = "tick", None
            try:
                if kind == "resync":
                    self._resync(payload)
                elif kind == "exit":
                    self._on_exit(*payload)
                elif kind != "tick":
                    self._on_pod(kind, payload)
                self._on_timers()
            except Exception as e:  # one bad pod must not stop the node
                log.exception("local kubelet")
                self._error(f"{kind}: {e!r}")

    def _error(self, message: str) -> None:
        log.warning("local kubelet: %s", message)
        self.errors.append(message)

    # --- pod lifecycle -----------------------------------------------------------------------------------

    def _resync(self, pods: list[dict[str, Any]]) -> None:
        seen = {p["metadata"]["uid"] for p in pods}
        for uid in [u for u in self._pods if u not in seen]:
            self._forget(uid)
        for pod in pods:
            self._on_pod("MODIFIED", pod)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        if kind == "DELETED":
            self._forget(uid)
            return
        node = spec.get("nodeName")
        if not node:
            scheduler = spec.get("schedulerName", "default-scheduler")
            if not meta.get("deletionTimestamp") and uid not in self._bound and scheduler == "default-scheduler":
                self._bind(pod)
            return
        if node != self.config.node_name:
            return
        run = self._pods.get(uid)
        if meta.get("deletionTimestamp"):
            self._terminate(pod, run)
            return
        if run is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            self._start_pod(pod)
        elif run is not None:
            run.pod = pod

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
        }
        try:
            # The generated client cannot deserialize a Binding response; the raw response is enough.
            self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):
                raise
        self._bound.add(meta["uid"])

    def _start_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        pod_dir = self.config.work_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)

        def runs(key: str, init: bool) -> list[ContainerRun]:
            return [ContainerRun(spec=c, init=init, log=pod_dir / f"{c['name']}.log") for c in spec.get(key) or []]

        run = PodRun(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            dir=pod_dir,
            pod=pod,
            init=runs("initContainers", True),
            main=runs("containers", False),
        )
        with self._index_lock:
            self._pods[run.uid] = run
            self._by_name[(run.namespace, run.name)] = run
        self._advance(run)

    def _advance(self, run: PodRun) -> None:
        """Start whatever should run next; a ConfigError leaves the pod Pending and retries in 2s."""
        run.retry_at = None
        try:
            if run.base_env is None:
                run.base_env = self._base_env(run)
            pending_init = [c for c in run.init if c.exit_code != 0]
            if pending_init:
                first = pending_init[0]
                if first.proc is None:
                    self._start_container(run, first)
            else:
                for c in run.main:
                    if c.proc is None:
                        self._start_container(run, c)
        except ConfigError as e:
            for c in run.all():
                if c.proc is None:
                    c.waiting = ("CreateContainerConfigError", str(e))
            run.retry_at = time.monotonic() + 2
        self._report(run)

    def _start_container(self, run: PodRun, c: ContainerRun) -> None:
        assert run.base_env is not None
        env = self._container_env(run, c.spec, run.base_env)
        image = c.spec.get("image", "")
        command = list(
            c.spec.get("command") or self.config.image_entrypoints.get(image) or self.config.default_entrypoint
        )
        if not command and not c.spec.get("args"):
            raise ConfigError(
                f"container {c.name!r} has no command and the local kubelet knows no entrypoint for {image!r}"
            )
        argv = [expand(a, env) for a in command + list(c.spec.get("args") or [])]
        working_dir = Path(c.spec.get("workingDir") or run.dir)
        if not working_dir.is_dir():
            working_dir = run.dir
        with c.log.open("ab") as f:
            f.write(f"# local kubelet {now_iso()}: {argv}\n".encode())
        try:
            c.proc = procs.spawn(argv, c.log, env=env, cwd=working_dir)
        except OSError as e:
            # Like a runtime that cannot find the executable: the container fails with 128.
            c.proc = None
            c.started_at = c.finished_at = now_iso()
            c.exit_code = 128
            with c.log.open("ab") as f:
                f.write(f"# local kubelet: cannot start: {e}\n".encode())
            self._events.put(("exit", (run.uid, c.name, None, 128)))
            c.waiting = None
            return
        c.started_at = now_iso()
        c.finished_at = None
        c.exit_code = None
        c.restart_at = None
        c.waiting = None
        proc = c.proc
        threading.Thread(
            target=lambda: self._events.put(("exit", (run.uid, c.name, proc, proc.wait()))),
            name=f"wait-{run.name}-{c.name}",
            daemon=True,
        ).start()

    def _on_exit(self, uid: str, name: str, proc: subprocess.Popen[bytes] | None, code: int) -> None:
        run = self._pods.get(uid)
        if run is None or run.deleted:
            return
        c = next(c for c in run.all() if c.name == name)
        if proc is not None and c.proc is not proc:
            return
        if proc is not None:
            procs.forget(proc)
        # A signal shows up as a negative return code; a runtime reports 128+signal.
        c.exit_code = code if code >= 0 else 128 - code
        c.finished_at = now_iso()
        policy = run.restart_policy
        if policy == "Always" or (policy == "OnFailure" and c.exit_code != 0):
            c.last_terminated = c.terminated()
            c.restart_count += 1
            c.restart_at = time.monotonic() + min(10.0, 2.0 ** (c.restart_count - 1))
            c.waiting = ("CrashLoopBackOff" if c.exit_code else "Completed", f"restarting {c.name}")
        elif c.init and c.exit_code == 0:
            self._advance(run)
            return
        self._report(run)

    def _on_timers(self) -> None:
        now = time.monotonic()
        for run in list(self._pods.values()):
            if run.deleted:
                continue
            if run.retry_at is not None and run.retry_at <= now:
                self._advance(run)
            for c in run.all():
                if c.restart_at is not None and c.restart_at <= now:
                    c.proc = None
                    c.exit_code = None
                    c.restart_at = None
                    self._advance(run)

    def _terminate(self, pod: dict[str, Any], run: PodRun | None) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if uid in self._finalized:
            return
        self._finalized.add(uid)
        grace = min(float(meta.get("deletionGracePeriodSeconds") or 0), self.config.max_grace)
        if run is not None and not run.deleted:
            run.deleted = True
            for c in run.all():
                c.restart_at = None
                if c.proc is not None and c.exit_code is None:
                    code = procs.stop(c.proc, grace=grace)
                    c.exit_code = 137 if code is None or code < 0 else code
                    c.finished_at = now_iso()
            self._report(run, force=True)
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                grace_period_seconds=0,
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _forget(self, uid: str) -> None:
        self._bound.discard(uid)
        self._finalized.discard(uid)
        with self._index_lock:
            run = self._pods.pop(uid, None)
        if run is None:
            return
        run.deleted = True
        for c in run.all():
            if c.proc is not None and c.proc.poll() is None:
                procs.stop(c.proc, grace=1.0)

    # --- status --------------------------------------------------------------------------------------------

    def _phase(self, run: PodRun) -> str:
        if any(c.exit_code not in (None, 0) and c.restart_at is None for c in run.init):
            return "Failed"
        if any(c.exit_code != 0 for c in run.init) or any(c.proc is None and c.exit_code is None for c in run.main):
            if any(c.proc is not None or c.restart_at is not None for c in run.main):
                return "Running"
            return "Pending"
        if any(c.exit_code is None or c.restart_at is not None for c in run.main):
            return "Running"
        return "Succeeded" if all(c.exit_code == 0 for c in run.main) else "Failed"

    def _report(self, run: PodRun, force: bool = False) -> None:
        if run.deleted and not force:
            return
        phase = self._phase(run)
        run.phase = phase
        ts = now_iso()
        initialized = all(c.exit_code == 0 for c in run.init)
        ready = phase == "Running" and all(c.proc is not None and c.exit_code is None for c in run.main)

        def condition(kind: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
            cond = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": ts}
            if reason and not ok:
                cond["reason"] = reason
            return cond

        finished = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": LOCAL_IP,
            "hostIPs": [{"ip": LOCAL_IP}],
            "podIP": LOCAL_IP,
            "podIPs": [{"ip": LOCAL_IP}],
            "startTime": run.start_time,
            "conditions": [
                condition("PodScheduled", True),
                condition("Initialized", initialized, "ContainersNotInitialized"),
                condition("ContainersReady", ready, finished),
                condition("Ready", ready, finished),
            ],
            "containerStatuses": [c.status() for c in run.main],
        }
        if run.init:
            status["initContainerStatuses"] = [c.status() for c in run.init]
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})
        except ApiException as e:
            if e.status != 404:
                raise

    # --- environment -------------------------------------------------------------------------------------

    def _base_env(self, run: PodRun) -> dict[str, str]:
        spec = run.pod["spec"]
        path = os.pathsep.join([*self.config.extra_path, os.environ.get("PATH", "/usr/bin:/bin")])
        env = {
            "PATH": path,
            "HOME": str(run.dir),
            "HOSTNAME": run.name,
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": self.config.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.config.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.config.api_port),
        }
        if spec.get("automountServiceAccountToken", True):
            env["CDI_SERVICEACCOUNT_DIR"] = str(self._project_token(run))
        return env

    def _project_token(self, run: PodRun) -> Path:
        sa = run.pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [],
                "expirationSeconds": self.config.token_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": run.name, "uid": run.uid},
            },
        }
        try:
            resp = self.core.create_namespaced_service_account_token(sa, run.namespace, body)
        except ApiException as e:
            raise ConfigError(f"cannot get a token for ServiceAccount {run.namespace}/{sa}: {e.reason}") from e
        sa_dir = run.dir / "serviceaccount"
        sa_dir.mkdir(exist_ok=True)
        token = resp.status.token if resp.status else None
        if not token:
            raise ConfigError(f"TokenRequest for ServiceAccount {run.namespace}/{sa} returned no token")
        (sa_dir / "token").write_text(token)
        (sa_dir / "ca.crt").write_bytes(self.config.ca_cert.read_bytes())
        (sa_dir / "namespace").write_text(run.namespace)
        return sa_dir

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        try:
            if kind == "secret":
                obj = self.core.read_namespaced_secret(name, namespace)
                return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.data or {}).items()}
            cm = self.core.read_namespaced_config_map(name, namespace)
            return dict(cm.data or {})
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _container_env(self, run: PodRun, container: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("configMap", "configMapRef"), ("secret", "secretRef")):
                ref = source.get(key)
                if not ref:
                    continue
                data = self._lookup(kind, run.namespace, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f"{kind} {ref['name']!r} not found")
                env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            value = self._env_value(run, container, var, env)
            if value is not None:
                env[var["name"]] = value
        mounts = self._mount_volumes(run, container)
        for name in [v["name"] for v in container.get("env") or []]:
            value = env.get(name, "")
            for mount_path, local in mounts.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    env[name] = str(local) + value[len(mount_path.rstrip("/")) :]
        return env

    def _mount_volumes(self, run: PodRun, container: dict[str, Any]) -> dict[str, Path]:
        """Materializes the container's secret, configMap and emptyDir volumes under the pod's directory; returns
        {mountPath: local directory}. A process cannot see the mountPath itself, so env values naming a path under
        it are rewritten to the local directory (see _container_env)."""
        volumes = {v["name"]: v for v in run.pod["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise ConfigError(f"volumeMount {mount['name']!r} names no volume of the pod")
            if "projected" in volume:  # the ServiceAccount token volume: CDI_SERVICEACCOUNT_DIR stands in for it
                continue
            local = run.dir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            for kind, key, name_key in (("secret", "secret", "secretName"), ("configMap", "configMap", "name")):
                source = volume.get(key)
                if source is None:
                    continue
                data = self._lookup(kind, run.namespace, source[name_key])
                if data is None:
                    if source.get("optional"):
                        break
                    raise ConfigError(f"{kind} {source[name_key]!r} not found (volume {mount['name']})")
                for item_key, value in data.items():
                    (local / item_key).write_text(value)
                break
            else:
                if "emptyDir" not in volume:
                    raise ConfigError(f"volume {mount['name']!r}: only secret, configMap and emptyDir are supported")
            mounts[mount["mountPath"]] = local
        return mounts

    def _env_value(
        self, run: PodRun, container: dict[str, Any], var: dict[str, Any], env: Mapping[str, str]
    ) -> str | None:
        if "valueFrom" not in var:
            return expand(str(var.get("value", "")), env)
        source = var["valueFrom"]
        for kind, key in (("secret", "secretKeyRef"), ("configMap", "configMapKeyRef")):
            ref = source.get(key)
            if not ref:
                continue
            data = self._lookup(kind, run.namespace, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                missing = f"{kind} {ref['name']!r}" if data is None else f"key {ref['key']!r} in {kind} {ref['name']!r}"
                raise ConfigError(f"{missing} not found (env {var['name']})")
            return data[ref["key"]]
        if "fieldRef" in source:
            return field_value(run.pod, source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]  # e.g. limits.cpu
            group, _, name = resource.partition(".")
            return str(((container.get("resources") or {}).get(group) or {}).get(name, "0"))
        raise ConfigError(f"unsupported valueFrom for env {var['name']}: {sorted(source)}")
