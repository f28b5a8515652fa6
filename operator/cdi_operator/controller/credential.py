"""WarehouseCredential: validate, test the connection (reach + log in), and the `cdi.ingest.dev/in-use` finalizer.

The finalizer is on a credential exactly while an Active or Suspended CdiIntegration of its namespace refers to it
(both have a CronJob that would fail without it). Deleting a credential in use waits, with a status message and a
Warning Event naming the integrations; once none is left, the finalizer is removed and the deletion completes.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from kubernetes.client import ApiException
from pydantic import ValidationError

from cdi_operator.api.models import WarehouseCredentialSpec
from cdi_operator.controller import conditions, connection
from cdi_operator.controller.connection import spec_error, test_wanted
from cdi_operator.controller.kubeapi import CDI, WHC, KubeApi
from cdi_operator.controller.settings import OperatorSettings

log = logging.getLogger(__name__)

IN_USE_FINALIZER = "cdi.ingest.dev/in-use"
IN_USE_PHASES = ("Active", "Suspended")
IN_USE = "InUse"

JSON = dict[str, Any]


def users_of(credential: str, integrations: list[JSON]) -> list[str]:
    """Names of the Active/Suspended integrations (not being deleted) that refer to `credential`, sorted."""
    names = []
    for obj in integrations:
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        ref = ((obj.get("spec") or {}).get("credentialRef") or {}).get("name")
        if ref == credential and (obj.get("status") or {}).get("phase") in IN_USE_PHASES:
            names.append(str(meta.get("name")))
    return sorted(names)


def in_use_message(users: list[str]) -> str:
    listed = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
    return f"in use by CdiIntegration {listed}; deletion waits until they are deleted or point at another credential"


def finalizers_with(obj: JSON, present: bool) -> list[str] | None:
    """The finalizers list with ours added or removed; None when it is already right."""
    current = list((obj.get("metadata") or {}).get("finalizers") or [])
    if (IN_USE_FINALIZER in current) == present:
        return None
    return [*current, IN_USE_FINALIZER] if present else [f for f in current if f != IN_USE_FINALIZER]


async def _set_finalizer(kube: KubeApi, obj: JSON, present: bool) -> bool:
    finalizers = finalizers_with(obj, present)
    if finalizers is None:
        return False
    meta = obj["metadata"]
    patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
    try:
        await kube.patch(WHC, meta["namespace"], meta["name"], patch)
    except ApiException as exc:
        if exc.status in (404, 409):  # gone, or changed since read: the next reconcile sees the new state
            return False
        raise
    return True


async def ensure_in_use_finalizer(kube: KubeApi, credential: JSON, user: str) -> None:
    """Called when an integration becomes Active/Suspended: block the credential's deletion from now on."""
    if (credential.get("metadata") or {}).get("deletionTimestamp"):
        return  # a finalizer cannot be added to an object being deleted
    if await _set_finalizer(kube, credential, True):
        log.info("finalizer %s added to the credential for %s", IN_USE_FINALIZER, user)


def credential_fingerprint(obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    return connection.fingerprint(meta.get("uid"), meta.get("generation"))


class CredentialReconciler:
    def __init__(self, kube: KubeApi, settings: OperatorSettings) -> None:
        self.kube = kube
        self.settings = settings

    async def reconcile(self, namespace: str, name: str) -> None:
        obj = await self.kube.get(WHC, namespace, name)
        if obj is None:
            return
        meta = obj["metadata"]
        generation = meta.get("generation")
        status: JSON = dict(obj.get("status") or {})
        users = users_of(name, await self.kube.list_objects(CDI, namespace))

        if meta.get("deletionTimestamp"):
            if not users:
                await _set_finalizer(self.kube, obj, False)
                return
            message = in_use_message(users)
            current = conditions.find(status.get("conditions"), conditions.READY) or {}
            if current.get("message") != message:
                await self.kube.event(obj, "Warning", "DeletionBlocked", f"deletion of {name} waits: {message}")
                wants = [
                    conditions.Want(conditions.READY, "False", IN_USE, message),
                    conditions.Want(conditions.RECONCILING, "True", IN_USE, message),
                ]
                await self._write(
                    obj, status, {"conditions": conditions.apply(status.get("conditions"), wants, generation)}
                )
            return
        await _set_finalizer(self.kube, obj, bool(users))

        try:
            spec = WarehouseCredentialSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            message = f"WarehouseCredential {namespace}/{name}: {spec_error(exc)}"
            wants = conditions.stalled("InvalidSpec", message, connection="Unknown")
            await self._write(
                obj,
                status,
                {
                    "observedGeneration": generation,
                    "conditions": conditions.apply(status.get("conditions"), wants, generation),
                },
            )
            return

        fingerprint = credential_fingerprint(obj)
        test = status.get("connectionTest") or {}
        wanted, _, requested = test_wanted(obj, fingerprint, self.settings.retest_failed_seconds)
        if wanted:
            message = f"testing the connection to the {spec.type.value} warehouse"
            testing = {
                "observedGeneration": generation,
                "connectionTest": connection.testing_status(fingerprint, message),
                "conditions": conditions.apply(
                    status.get("conditions"), conditions.testing(message, keep_ready=False), generation
                ),
            }
            if requested is not None:
                testing["lastHandledTestConnection"] = requested
            status = await self._write(obj, status, testing)
            secrets = await self.kube.secret_values(namespace, spec.secret_refs())
            outcome = await connection.run_test(
                partial(connection.check_credential, spec, secrets), self.settings.connection_test_timeout
            )
            test = outcome.status(fingerprint)
            if outcome.passed:
                await self.kube.event(obj, "Normal", "ConnectionTestPassed", outcome.message)
            else:
                await self.kube.event(obj, "Warning", "ConnectionTestFailed", f"{outcome.reason}: {outcome.message}")
        if test.get("result") == connection.PASSED:
            wants = conditions.ready("Verified", str(test.get("message") or ""))
        else:
            reason = str(test.get("reason") or "ConnectionTestFailed")
            wants = conditions.stalled(reason, str(test.get("message") or ""), connection="False")
        await self._write(
            obj,
            status,
            {
                "observedGeneration": generation,
                "connectionTest": test,
                "conditions": conditions.apply(status.get("conditions"), wants, generation),
            },
        )

    async def _write(self, obj: JSON, status: JSON, updates: JSON) -> JSON:
        patch = {k: v for k, v in updates.items() if status.get(k) != v}
        meta = obj["metadata"]
        if patch:
            try:
                await self.kube.patch_status(WHC, meta["namespace"], meta["name"], patch)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return {**status, **patch}
