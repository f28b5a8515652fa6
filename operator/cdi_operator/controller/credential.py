"""WarehouseCredential: validate, test the connection (reach + log in), and the `cdi.ingest.dev/in-use` finalizer.

The finalizer is on a credential exactly while an Active or Suspended CdiIntegration of its namespace refers to it
(both have a CronJob that would fail without it). Deleting a credential in use waits, with a status message and a
Warning Event naming the integrations; once none is left, the finalizer is removed and the deletion completes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial

from pydantic import ValidationError

from cdi_operator.api import reasons, snowflake_key
from cdi_operator.api.json import JSON
from cdi_operator.api.models import (
    API_VERSION,
    CDI_PLURAL,
    ROTATE_KEY_ANNOTATION,
    TEST_CONNECTION_ANNOTATION,
    WHC_PLURAL,
    SecretKeyRef,
    WarehouseCredentialSpec,
    WarehouseCredentialStatus,
)
from cdi_operator.controller import conditions, connection, snowflake_keys
from cdi_operator.controller.connection import spec_error, test_wanted
from cdi_operator.controller.settings import OperatorSettings
from cdi_operator.controller.status import StatusWriter
from cdi_operator.kube.aio import KubeApi
from cdi_operator.kube.errors import Conflict, NotFound
from cdi_operator.kube.objects import controller_reference

log = logging.getLogger(__name__)

IN_USE_FINALIZER = "cdi.ingest.dev/in-use"
IN_USE_PHASES = ("Active", "Suspended")
# How often a pending rotation tries to log in with the new key (also on each new test-connection value).
NEXT_KEY_CHECK_SECONDS = 300.0
KEY_STATUS_FIELDS = ("publicKey", "keyFingerprint", "keySlot", "alterUserStatement", "rotation", "lastHandledRotateKey")


CredentialCheck = Callable[[WarehouseCredentialSpec, Mapping[tuple[str, str], str]], connection.Outcome]


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
        await kube.patch(WHC_PLURAL, meta["namespace"], meta["name"], patch)
    except (NotFound, Conflict):  # gone, or changed since read: the next reconcile sees the new state
        return False
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
    def __init__(
        self,
        kube: KubeApi,
        settings: OperatorSettings,
        on_test: Callable[[str, str], None] | None = None,
        check: CredentialCheck = connection.check_credential,
        tester: connection.ConnectionTester | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.tester = tester or connection.ConnectionTester.from_settings(settings)
        self.on_test = on_test  # (warehouse type, result) after each connection test: the metrics
        self.check = check  # the login test; the reconciler tests give a Snowflake that knows which keys were set

    async def reconcile(self, namespace: str, name: str) -> None:
        obj = await self.kube.get(WHC_PLURAL, namespace, name)
        if obj is None:
            return
        writer = StatusWriter(self.kube, WHC_PLURAL, obj, WarehouseCredentialStatus)
        try:
            await self._reconcile(obj, writer)
        finally:  # what was found is written also when a step failed (the next reconcile retries it)
            await writer.flush()

    async def _reconcile(self, obj: JSON, writer: StatusWriter) -> None:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = meta.get("generation")
        status = writer.written
        users = users_of(name, await self.kube.list_objects(CDI_PLURAL, namespace))

        if meta.get("deletionTimestamp"):
            if not users:
                await _set_finalizer(self.kube, obj, False)
                return
            message = in_use_message(users)
            current = conditions.find(status.get("conditions"), reasons.READY) or {}
            if current.get("message") != message:
                await self.kube.event(obj, "Warning", reasons.DELETION_BLOCKED, f"deletion of {name} waits: {message}")
                writer.want(
                    [
                        conditions.Want(reasons.READY, "False", reasons.IN_USE, message),
                        conditions.Want(reasons.RECONCILING, "True", reasons.IN_USE, message),
                    ]
                )
            return
        await _set_finalizer(self.kube, obj, bool(users))

        try:
            spec = WarehouseCredentialSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            message = f"WarehouseCredential {namespace}/{name}: {spec_error(exc)}"
            writer.set(observed_generation=generation)
            writer.want(conditions.stalled(reasons.INVALID_SPEC, message, connection="Unknown"))
            return

        fingerprint = credential_fingerprint(obj)
        test = status.get("connectionTest") or {}
        wanted, _, requested = test_wanted(
            obj,
            fingerprint,
            self.settings.retest_failed_seconds,
            retest_missing_secret_seconds=self.settings.resync_seconds,
        )
        key_updates, key_wants = await self._keys(obj, status, spec, requested is not None)
        writer.set(observed_generation=generation)
        writer.want(key_wants)
        if key_updates is None:  # the owned Secret is not usable: said in the conditions, nothing to test with
            return
        spec = snowflake_key.resolved_spec(spec, name)
        if wanted:
            message = f"testing the connection to the {spec.type.value} warehouse"
            writer.set(connection_test=connection.testing_status(fingerprint, message))
            if requested is not None:
                writer.set(last_handled_test_connection=requested)
            writer.want(conditions.testing(message, keep_ready=False))
            await writer.flush()  # a test may take minutes: show that it runs (the key fields come with its outcome)
            secrets = await self.kube.secret_values(namespace, spec.secret_refs())
            outcome = await self.tester.run(
                partial(self.check, spec, secrets), f"WarehouseCredential {namespace}/{name}"
            )
            test = outcome.status(fingerprint)
            if self.on_test is not None:
                self.on_test(spec.type.value, outcome.result)
            if outcome.passed:
                await self.kube.event(obj, "Normal", reasons.CONNECTION_TEST_PASSED, outcome.message)
            else:
                await self.kube.event(
                    obj, "Warning", reasons.CONNECTION_TEST_FAILED, f"{outcome.reason}: {outcome.message}"
                )
        if test.get("result") == connection.PASSED:
            wants = conditions.ready(reasons.VERIFIED, str(test.get("message") or ""))
        else:
            reason = str(test.get("reason") or reasons.CONNECTION_TEST_FAILED)
            wants = conditions.stalled(reason, str(test.get("message") or ""), connection="False")
        writer.set(connection_test=test, **key_updates)
        writer.want(wants)

    # --- the Snowflake key pair (see snowflake_keys.py) ---

    async def _keys(
        self, obj: JSON, status: JSON, spec: WarehouseCredentialSpec, test_requested: bool
    ) -> tuple[JSON | None, list[conditions.Want]]:
        """Create the owned key Secret, advance a rotation, flag another credential for the same user.

        Returns the status fields to write (None when the Secret is unusable) and conditions to set."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        rotate_value = ((meta.get("annotations") or {}).get(ROTATE_KEY_ANNOTATION)) or None
        if not snowflake_key.managed(spec):
            updates: JSON = {k: None for k in KEY_STATUS_FIELDS if status.get(k) is not None}
            if rotate_value and rotate_value != status.get("lastHandledRotateKey"):
                await self.kube.event(
                    obj,
                    "Warning",
                    reasons.KEY_ROTATION_IGNORED,
                    f"{ROTATE_KEY_ANNOTATION} applies only to a snowflake credential whose key the operator "
                    "generates (no spec.snowflake.privateKeySecretRef); rotate your own key yourself",
                )
                updates["lastHandledRotateKey"] = rotate_value
            wants = await self._workspace_conflict(obj, status, spec)
            if conditions.find(status.get("conditions"), reasons.KEY_CONFLICT) is not None:
                wants.append(conditions.Want(reasons.KEY_CONFLICT, "False", reasons.NOT_MANAGED))
            return updates, wants
        assert spec.snowflake is not None
        user = spec.snowflake.user
        wants = await self._conflicts(obj, status, spec) + await self._workspace_conflict(obj, status, spec)
        secret_name = snowflake_key.secret_name(name)
        secret = await self.kube.read_secret(namespace, secret_name)
        if secret is None:
            state = snowflake_keys.initial_state(rotate_value)
            await self._create_secret(obj, state)
            public = snowflake_keys.public_key(state.active_pem)
            await self.kube.event(
                obj,
                "Normal",
                reasons.KEY_PAIR_GENERATED,
                f"generated a key pair in Secret {secret_name} (public key {snowflake_keys.fingerprint(public)}); "
                f"let Snowflake know it: {snowflake_keys.set_statement(user, public, state.slot)}",
            )
        else:
            owner_uids = [r.get("uid") for r in secret.get("ownerReferences") or []]
            found = snowflake_keys.from_secret(secret["data"], secret["annotations"])
            problem = reason = None
            if meta.get("uid") not in owner_uids:
                reason = reasons.KEY_SECRET_CONFLICT
                problem = (
                    f"Secret {secret_name} exists but is not owned by this credential (no ownerReference to it); "
                    "the operator keeps its generated key there: delete or rename that Secret, or set "
                    "spec.snowflake.privateKeySecretRef to bring your own key"
                )
            elif found is None:
                reason = reasons.KEY_SECRET_INVALID
                problem = (
                    f"Secret {secret_name} has no key {snowflake_key.ACTIVE_KEY!r}; delete the Secret to have a "
                    "new key pair generated (and run the new ALTER USER statement from status)"
                )
            if found is None or problem is not None or reason is not None:
                reason = reason or reasons.KEY_SECRET_INVALID
                message = problem or reason
                current = conditions.find(status.get("conditions"), reasons.STALLED) or {}
                if current.get("message") != message:
                    await self.kube.event(obj, "Warning", reason, message)
                return None, [*wants, *conditions.stalled(reason, message, connection="Unknown")]
            state = found
            if snowflake_keys.rotation_wanted(state, rotate_value):
                assert rotate_value is not None
                was_rotating = state.rotating
                state = snowflake_keys.start_rotation(state, rotate_value)
                await self._patch_secret(namespace, secret_name, secret["resourceVersion"], state)
                if was_rotating:
                    message = (
                        f"{ROTATE_KEY_ANNOTATION}={rotate_value!r}: a rotation is already waiting for its statement; "
                        "keeping its new key (status.rotation.statement)"
                    )
                    await self.kube.event(obj, "Normal", reasons.KEY_ROTATION_PENDING, message)
                else:
                    fields = snowflake_keys.status_fields(state, user)
                    await self.kube.event(
                        obj,
                        "Normal",
                        reasons.KEY_ROTATION_STARTED,
                        f"generated a new key ({fields['rotation']['nextKeyFingerprint']}); syncs keep using the "
                        f"current key until a login with the new one passes. Run: {fields['rotation']['statement']}",
                    )
                secret = await self.kube.read_secret(namespace, secret_name) or secret
            elif state.rotating and self._next_key_check_due(status, state, test_requested):
                state, checked = await self._check_next_key(obj, spec, state, secret)
                return self._key_status(status, state, user, checked), wants
        return self._key_status(status, state, user, None), wants

    def _key_status(self, status: JSON, state: snowflake_keys.KeyState, user: str, checked: JSON | None) -> JSON:
        fields = snowflake_keys.status_fields(state, user)
        rotation = fields.get("rotation")
        old = status.get("rotation") or {}
        if rotation is not None and rotation.get("phase") == snowflake_keys.PHASE_PENDING:
            if checked is not None:
                rotation.update(checked)
            elif old.get("nextKeyFingerprint") == rotation.get("nextKeyFingerprint"):
                rotation["checkedAt"] = old.get("checkedAt")
                rotation["message"] = old.get("message") or rotation["message"]
            else:
                rotation["checkedAt"] = conditions.timestamp()  # the first login is tried a full interval later
        if rotation is not None:
            rotation = {k: v for k, v in rotation.items() if v is not None}
            # status is written by JSON merge patch: a field the new phase lacks must be deleted explicitly.
            rotation.update({k: None for k in old if k not in rotation})
            fields["rotation"] = rotation
        return fields

    def _next_key_check_due(self, status: JSON, state: snowflake_keys.KeyState, test_requested: bool) -> bool:
        if test_requested:
            return True
        rotation = status.get("rotation") or {}
        if rotation.get("nextKeyFingerprint") != snowflake_keys.fingerprint(
            snowflake_keys.public_key(state.next_pem or "")
        ):
            return False
        try:
            checked = datetime.fromisoformat(str(rotation.get("checkedAt")).replace("Z", "+00:00"))
        except ValueError:
            return True
        return (datetime.now(UTC) - checked).total_seconds() >= NEXT_KEY_CHECK_SECONDS

    async def _check_next_key(
        self, obj: JSON, spec: WarehouseCredentialSpec, state: snowflake_keys.KeyState, secret: JSON
    ) -> tuple[snowflake_keys.KeyState, JSON | None]:
        """Log in with the pending key; when it passes, switch the Secret's active key to it."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        assert spec.snowflake is not None and state.next_pem is not None
        secret_name = snowflake_key.secret_name(name)
        ref = SecretKeyRef(name=secret_name, key=snowflake_keys.NEXT_KEY)
        next_spec = spec.model_copy(
            update={"snowflake": spec.snowflake.model_copy(update={"private_key_secret_ref": ref})}
        )
        outcome = await self.tester.run(
            partial(self.check, next_spec, {(ref.name, ref.key): state.next_pem}),
            f"WarehouseCredential {namespace}/{name}, its next key",
        )
        if not outcome.passed:
            message = (
                f"a login with the new key failed ({outcome.reason}); run status.rotation.statement, then set a new "
                f"value of {TEST_CONNECTION_ANNOTATION} (or wait up to {NEXT_KEY_CHECK_SECONDS:g} s)"
            )
            return state, {"checkedAt": conditions.timestamp(), "message": message}
        new_state = snowflake_keys.complete_rotation(state)
        await self._patch_secret(namespace, secret_name, secret["resourceVersion"], new_state)
        retired = new_state.retired_slot or 1
        await self.kube.event(
            obj,
            "Normal",
            reasons.KEY_ROTATED,
            f"a login with the new key passed; it is now the active key. Retire the old one: "
            f"{snowflake_keys.unset_statement(spec.snowflake.user, retired)}",
        )
        return new_state, None

    async def _conflicts(self, obj: JSON, status: JSON, spec: WarehouseCredentialSpec) -> list[conditions.Want]:
        meta = obj["metadata"]
        others = snowflake_keys.conflicting(
            meta["name"], spec, await self.kube.list_objects(WHC_PLURAL, meta["namespace"])
        )
        if not others:
            return self._unflagged(status, reasons.KEY_CONFLICT, reasons.NO_CONFLICT)
        assert spec.snowflake is not None
        message = (
            f"WarehouseCredential {', '.join(others)} in this namespace also names Snowflake user "
            f"{spec.snowflake.user!r} of account {spec.snowflake.account!r}: their ALTER USER statements would "
            "overwrite each other's key slots; use one credential per Snowflake user"
        )
        return await self._flagged(obj, status, reasons.KEY_CONFLICT, reasons.SAME_SNOWFLAKE_USER, message)

    async def _workspace_conflict(
        self, obj: JSON, status: JSON, spec: WarehouseCredentialSpec
    ) -> list[conditions.Want]:
        """Braze takes one Snowflake user for one workspace only: flag a user whose integrations go to several."""
        if spec.snowflake is None:
            return []
        namespace = obj["metadata"]["namespace"]
        workspaces = snowflake_keys.braze_workspaces(
            obj["metadata"]["name"],
            spec,
            await self.kube.list_objects(WHC_PLURAL, namespace),
            await self.kube.list_objects(CDI_PLURAL, namespace),
        )
        if len(workspaces) < 2:
            return self._unflagged(status, reasons.WORKSPACE_CONFLICT, reasons.ONE_WORKSPACE)
        listed = "; ".join(f"{', '.join(names)} to {workspace}" for workspace, names in workspaces.items())
        message = (
            f"Snowflake user {spec.snowflake.user!r} of account {spec.snowflake.account!r} is used for several Braze "
            f"workspaces ({listed}); Braze refuses one Snowflake user for several workspaces: give each workspace "
            "its own user and WarehouseCredential"
        )
        return await self._flagged(obj, status, reasons.WORKSPACE_CONFLICT, reasons.SEVERAL_WORKSPACES, message)

    async def _flagged(self, obj: JSON, status: JSON, kind: str, reason: str, message: str) -> list[conditions.Want]:
        """Condition `kind` True with `reason`; a Warning Event when that is news."""
        current = conditions.find(status.get("conditions"), kind) or {}
        if current.get("message") != message or current.get("status") != "True":
            await self.kube.event(obj, "Warning", kind, message)
        return [conditions.Want(kind, "True", reason, message)]

    @staticmethod
    def _unflagged(status: JSON, kind: str, reason: str) -> list[conditions.Want]:
        """Condition `kind` False with `reason`, when it was ever set."""
        return [conditions.Want(kind, "False", reason)] if conditions.find(status.get("conditions"), kind) else []

    # --- the owned Secret (its values never reach a log, an Event or the status) ---

    async def _create_secret(self, obj: JSON, state: snowflake_keys.KeyState) -> None:
        meta = obj["metadata"]
        data, annotations = snowflake_keys.to_secret(state)
        secret_name = snowflake_key.secret_name(meta["name"])
        body: JSON = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": secret_name,
                "namespace": meta["namespace"],
                "labels": {snowflake_keys.CREDENTIAL_LABEL: meta["name"]},
                "annotations": {k: v for k, v in annotations.items() if v is not None},
                "ownerReferences": [
                    controller_reference(API_VERSION, "WarehouseCredential", meta, block_owner_deletion=False)
                ],
            },
            "stringData": {k: v for k, v in data.items() if v is not None},
        }
        await self.kube.create_secret(body)

    async def _patch_secret(
        self, namespace: str, name: str, resource_version: str, state: snowflake_keys.KeyState
    ) -> None:
        """Write `state` into the Secret, only over the version read (a concurrent change fails the reconcile,
        which the next one redoes from the Secret)."""
        data, annotations = snowflake_keys.to_secret(state)
        metadata = {"annotations": annotations, "resourceVersion": resource_version}
        await self.kube.patch_secret(namespace, name, data, metadata)
