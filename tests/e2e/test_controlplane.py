"""The harness is a real Kubernetes: CEL validation, the status subresource, CronJob → Job → Pod, garbage
collection and RBAC behave as the apiserver and controllers make them, not as a mock would."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Cluster, LocalKubelet
from harness.controlplane import REPO_ROOT
from harness.helpers import pod_logs, wait_until
from harness.node import RUNNER_IMAGE, node_mode
from kubernetes import client
from kubernetes.client import ApiException

pytestmark = pytest.mark.e2e

GROUP = "harness.test.dev"
MERGE_PATCH = "application/merge-patch+json"
# On a real cluster the pods need an image with a shell (and Python, for the in-cluster test); the local
# kubelet ignores images.
# On the real node (no registry) the project's image serves as both: it has a shell, coreutils and Python.
SHELL_IMAGE = RUNNER_IMAGE if node_mode() else "busybox:1.36"
PYTHON_IMAGE = RUNNER_IMAGE if node_mode() else "python:3.11-slim"


def test_apiserver_reports_the_pinned_version(kube: Cluster, kube_api: client.ApiClient) -> None:
    version = client.VersionApi(kube_api).get_code()
    if kube.is_local:
        # build.sh sets the version through -ldflags; without it the apiserver would say v0.0.0.
        go_mod = (REPO_ROOT / "hack" / "controlplane" / "go.mod").read_text()
        pinned = re.search(r"^\s*k8s\.io/kubernetes (v[0-9.]+)", go_mod, re.MULTILINE)
        assert pinned is not None
        assert version.git_version == pinned.group(1)
    assert version.major == "1"


@pytest.fixture(scope="module")
def widget_crd(kube_api: client.ApiClient) -> Iterator[str]:
    """A throwaway namespaced CRD with a CEL rule and a status subresource; returns its plural."""
    ext = client.ApiextensionsV1Api(kube_api)
    plural = f"widgets{secrets.token_hex(2)}"
    name = f"{plural}.{GROUP}"
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["replicas"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "!has(self.minReplicas) || self.minReplicas <= self.replicas",
                        "message": "minReplicas must not exceed replicas",
                    }
                ],
            },
            "status": {"type": "object", "properties": {"observed": {"type": "integer"}}},
        },
    }
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural[:-1], "kind": f"W{plural[1:-1]}"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": schema},
                        "subresources": {"status": {}},
                    }
                ],
            },
        }
    )

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_until(established, 60, f"CRD {name} to be Established", interval=0.2)
    # Discovery of a new CRD lags Established by a moment; a list proves the endpoint serves.
    custom = client.CustomObjectsApi(kube_api)
    wait_until(lambda: _lists(custom, plural), 30, f"the {plural} endpoint to serve", interval=0.2)
    yield plural
    ext.delete_custom_resource_definition(name)


def _lists(custom: client.CustomObjectsApi, plural: str) -> bool:
    try:
        custom.list_cluster_custom_object(GROUP, "v1", plural)
        return True
    except ApiException:
        return False


def _widget(plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    kind = f"W{plural[1:-1]}"
    return {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_cel_rule_rejects_bad_object(kube_api: client.ApiClient, namespace: str, widget_crd: str) -> None:
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        GROUP, "v1", namespace, widget_crd, _widget(widget_crd, "ok", {"replicas": 3, "minReplicas": 1})
    )

    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(
            GROUP, "v1", namespace, widget_crd, _widget(widget_crd, "bad", {"replicas": 1, "minReplicas": 5})
        )
    assert rejected.value.status == 422
    body = json.loads(rejected.value.body)
    assert body["reason"] == "Invalid"
    assert "minReplicas must not exceed replicas" in body["message"]
    assert body["details"]["causes"][0]["field"] == "spec"

    # The OpenAPI part of the schema is enforced too, with the apiserver's own wording.
    with pytest.raises(ApiException) as negative:
        custom.create_namespaced_custom_object(
            GROUP, "v1", namespace, widget_crd, _widget(widget_crd, "neg", {"replicas": -1})
        )
    assert negative.value.status == 422
    assert "should be greater than or equal to 0" in json.loads(negative.value.body)["message"]


def test_status_subresource_conflicts_on_stale_resource_version(
    kube_api: client.ApiClient, namespace: str, widget_crd: str
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    created = custom.create_namespaced_custom_object(
        GROUP, "v1", namespace, widget_crd, _widget(widget_crd, "w", {"replicas": 1})
    )
    stale = created["metadata"]["resourceVersion"]

    updated = custom.patch_namespaced_custom_object_status(
        GROUP,
        "v1",
        namespace,
        widget_crd,
        "w",
        {"metadata": {"resourceVersion": stale}, "status": {"observed": 1}, "spec": {"replicas": 9}},
        _content_type=MERGE_PATCH,
    )
    assert updated["status"] == {"observed": 1}
    # The status subresource ignores spec changes, and a status write does not bump the generation.
    assert updated["spec"] == {"replicas": 1}
    assert updated["metadata"]["generation"] == created["metadata"]["generation"]
    assert updated["metadata"]["resourceVersion"] != stale

    with pytest.raises(ApiException) as conflict:
        custom.patch_namespaced_custom_object_status(
            GROUP,
            "v1",
            namespace,
            widget_crd,
            "w",
            {"metadata": {"resourceVersion": stale}, "status": {"observed": 2}},
            _content_type=MERGE_PATCH,
        )
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "Conflict"
    current = custom.get_namespaced_custom_object_status(GROUP, "v1", namespace, widget_crd, "w")
    assert current["status"] == {"observed": 1}


def test_cronjob_runs_job_pod_and_owner_deletion_collects_children(
    kube_api: client.ApiClient, namespace: str, local_kubelet: LocalKubelet | None
) -> None:
    batch = client.BatchV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    batch.create_namespaced_cron_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "tick"},
            "spec": {
                "schedule": "* * * * *",
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "terminationGracePeriodSeconds": 1,
                                "containers": [
                                    {
                                        "name": "main",
                                        "image": SHELL_IMAGE,
                                        "command": ["sh", "-c", 'echo "hello from $POD_NAME"'],
                                        "env": [
                                            {
                                                "name": "POD_NAME",
                                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                            }
                                        ],
                                    }
                                ],
                            }
                        },
                    }
                },
            },
        },
    )

    def completed_job() -> client.V1Job | None:
        for job in batch.list_namespaced_job(namespace).items:
            if any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or []):
                return job
        return None

    def state() -> str:
        jobs = [(j.metadata.name, j.status.to_dict()) for j in batch.list_namespaced_job(namespace).items]
        pods = [(p.metadata.name, p.status.phase) for p in core.list_namespaced_pod(namespace).items]
        return f"jobs: {jobs}\npods: {pods}"

    # Every minute: the controller creates the Job at the next minute boundary.
    job = wait_until(completed_job, 150, "the CronJob's Job to complete", interval=2, details=state)
    assert job.metadata.owner_references[0].kind == "CronJob"
    assert job.status.succeeded == 1
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
    assert len(pods) == 1
    pod = pods[0]
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert f"hello from {pod.metadata.name}" in pod_logs(kube_api, local_kubelet, namespace, pod.metadata.name)

    batch.delete_namespaced_cron_job("tick", namespace, propagation_policy="Background")

    def collected() -> bool:
        return not batch.list_namespaced_job(namespace).items and not core.list_namespaced_pod(namespace).items

    wait_until(collected, 90, "the garbage collector to delete the Job and its Pod", interval=1, details=state)


def test_job_pod_failure_is_reported(
    kube_api: client.ApiClient, namespace: str, local_kubelet: LocalKubelet | None
) -> None:
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "fails"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": SHELL_IMAGE,
                                "command": ["sh", "-c", "echo boom >&2; exit 3"],
                            }
                        ],
                    }
                },
            },
        },
    )

    def failed() -> client.V1Job | None:
        job = batch.read_namespaced_job("fails", namespace)
        return job if any(c.type == "Failed" and c.status == "True" for c in job.status.conditions or []) else None

    job = wait_until(failed, 90, "Job fails to fail")
    assert job.status.failed == 1
    pod = client.CoreV1Api(kube_api).list_namespaced_pod(namespace, label_selector="job-name=fails").items[0]
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert "boom" in pod_logs(kube_api, local_kubelet, namespace, pod.metadata.name)


def test_service_account_without_role_is_denied(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}
    ).status.token

    sa_config = client.Configuration()
    sa_config.host = kube_api.configuration.host
    sa_config.ssl_ca_cert = kube_api.configuration.ssl_ca_cert
    sa_config.verify_ssl = kube_api.configuration.verify_ssl
    sa_config.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(sa_config) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        with pytest.raises(ApiException) as denied:
            sa_core.list_namespaced_config_map(namespace)
        assert denied.value.status == 403
        message = json.loads(denied.value.body)["message"]
        assert f'User "system:serviceaccount:{namespace}:nobody" cannot list resource "configmaps"' in message

        # The same identity with a Role is allowed: RBAC decides, not a blanket deny.
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-configmaps"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-configmaps",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )

        def allowed() -> bool:
            try:
                sa_core.list_namespaced_config_map(namespace)
                return True
            except ApiException as e:
                if e.status == 403:
                    return False
                raise

        wait_until(allowed, 30, "the RoleBinding to take effect", interval=0.2)
        with pytest.raises(ApiException) as still_denied:
            sa_core.list_namespaced_secret(namespace)
        assert still_denied.value.status == 403


IN_CLUSTER_PROBE = """
import json, os, ssl, urllib.request
sa = os.environ.get("CDI_SERVICEACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
token = open(os.path.join(sa, "token")).read()
ns = open(os.path.join(sa, "namespace")).read()
ctx = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt"))
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
req = urllib.request.Request(url, data=body, method="POST", headers={
    "Authorization": "Bearer " + token, "Content-Type": "application/json"})
review = json.load(urllib.request.urlopen(req, context=ctx))
print("RESULT " + json.dumps({
    "user": review["status"]["userInfo"]["username"], "namespace": ns,
    "env": {k: os.environ.get(k) for k in ("FROM_SECRET", "FROM_CM", "POD_NS", "POD_UID", "SA", "IP",
            "GREETING", "CM_color", "OPTIONAL")}}))
"""


def test_pod_gets_env_and_in_cluster_credentials(
    kube_api: client.ApiClient, namespace: str, local_kubelet: LocalKubelet | None
) -> None:
    """What the runner pods rely on: env from Secrets/ConfigMaps/downward API and a working SA token."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "runner"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"color": "blue"}})

    def ref(kind: str, name: str, key: str, optional: bool = False) -> dict[str, Any]:
        return {kind: {"name": name, "key": key, "optional": optional}}

    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    pod = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "probe"},
            "spec": {
                "serviceAccountName": "runner",
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "probe",
                        "image": PYTHON_IMAGE,
                        "command": ["python3", "-c", IN_CLUSTER_PROBE],
                        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
                        "env": [
                            {"name": "FROM_SECRET", "valueFrom": ref("secretKeyRef", "creds", "password")},
                            {"name": "FROM_CM", "valueFrom": ref("configMapKeyRef", "settings", "color")},
                            {"name": "OPTIONAL", "valueFrom": ref("secretKeyRef", "creds", "absent", True)},
                            {"name": "POD_NS", "valueFrom": field("metadata.namespace")},
                            {"name": "POD_UID", "valueFrom": field("metadata.uid")},
                            {"name": "SA", "valueFrom": field("spec.serviceAccountName")},
                            {"name": "IP", "valueFrom": field("status.podIP")},
                            {"name": "GREETING", "value": "$(FROM_CM) sky"},
                        ],
                    }
                ],
            },
        },
    )

    def finished() -> client.V1Pod | None:
        p = core.read_namespaced_pod("probe", namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    done = wait_until(
        finished,
        90,
        "pod probe to finish",
        details=lambda: str(core.read_namespaced_pod_status("probe", namespace).status),
    )
    logs = pod_logs(kube_api, local_kubelet, namespace, "probe")
    assert done.status.phase == "Succeeded", logs
    result = json.loads(next(line for line in logs.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    assert result["user"] == f"system:serviceaccount:{namespace}:runner"
    assert result["namespace"] == namespace
    env = result["env"]
    assert env["FROM_SECRET"] == "s3cret"
    assert env["FROM_CM"] == "blue"
    assert env["CM_color"] == "blue"
    assert env["GREETING"] == "blue sky"
    assert env["OPTIONAL"] is None
    assert env["POD_NS"] == namespace
    assert env["POD_UID"] == pod.metadata.uid
    assert env["SA"] == "runner"
    assert env["IP"]


def test_missing_secret_keeps_pod_pending_until_created(
    kube_api: client.ApiClient, namespace: str, local_kubelet: LocalKubelet | None
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "waits"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": SHELL_IMAGE,
                        "command": ["sh", "-c", 'echo "got $TOKEN"'],
                        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}],
                    }
                ],
            },
        },
    )

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("waits", namespace).status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None

    assert wait_until(waiting_reason, 60, "a waiting reason") in (
        "CreateContainerConfigError",
        "ContainerCreating",
    )
    wait_until(lambda: waiting_reason() == "CreateContainerConfigError", 60, "CreateContainerConfigError")
    core.create_namespaced_secret(namespace, {"metadata": {"name": "late"}, "stringData": {"token": "t0k"}})
    wait_until(
        lambda: core.read_namespaced_pod("waits", namespace).status.phase == "Succeeded",
        60,
        "pod waits to succeed",
    )
    assert "got t0k" in pod_logs(kube_api, local_kubelet, namespace, "waits")


def test_on_failure_restarts_container_until_it_succeeds(
    kube_api: client.ApiClient, namespace: str, local_kubelet: LocalKubelet | None
) -> None:
    batch = client.BatchV1Api(kube_api)
    # The first run leaves a marker in an emptyDir (a per-pod HOME for the local kubelet) and fails.
    script = 'if [ -e "$STATE/marker" ]; then echo second; exit 0; fi; touch "$STATE/marker"; echo first; exit 1'
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "flaky"},
            "spec": {
                "backoffLimit": 3,
                "template": {
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "volumes": [{"name": "state", "emptyDir": {}}],
                        "containers": [
                            {
                                "name": "main",
                                "image": SHELL_IMAGE,
                                "command": ["sh", "-c", script],
                                "env": [{"name": "STATE", "value": "/state" if local_kubelet is None else "."}],
                                "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                            }
                        ],
                    }
                },
            },
        },
    )

    def succeeded() -> bool:
        return (batch.read_namespaced_job("flaky", namespace).status.succeeded or 0) == 1

    wait_until(succeeded, 90, "Job flaky to succeed after a restart")
    pod = client.CoreV1Api(kube_api).list_namespaced_pod(namespace, label_selector="job-name=flaky").items[0]
    assert pod.status.container_statuses[0].restart_count == 1
    logs = pod_logs(kube_api, local_kubelet, namespace, pod.metadata.name)
    assert "second" in logs
    if local_kubelet is not None:
        assert "first" in logs  # the local kubelet keeps the log of every restart


def test_deleting_a_running_pod_kills_it(
    kube_api: client.ApiClient, namespace: str, local_kubelet: LocalKubelet | None
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "sleeper"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {
                        "name": "main",
                        "image": SHELL_IMAGE,
                        "command": ["sh", "-c", "echo started; exec sleep 300"],
                    }
                ],
            },
        },
    )

    def running() -> bool:
        return core.read_namespaced_pod("sleeper", namespace).status.phase == "Running"

    wait_until(running, 60, "pod sleeper to run", interval=0.2)
    wait_until(lambda: "started" in pod_logs(kube_api, local_kubelet, namespace, "sleeper"), 30, "sleeper's output")
    pid = None
    if local_kubelet is not None:
        status = core.read_namespaced_pod("sleeper", namespace).status.container_statuses[0]
        pid = int(status.container_id.removeprefix("local://"))
        os.kill(pid, 0)  # alive

    core.delete_namespaced_pod("sleeper", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
            return False
        except ApiException as e:
            return e.status == 404

    wait_until(gone, 60, "pod sleeper to be deleted", interval=0.2)
    if pid is not None:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
