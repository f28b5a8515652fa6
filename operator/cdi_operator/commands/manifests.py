"""Reading the multi-document YAML a user would `kubectl apply`, for `cdi sync -f`."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cdi_operator.api.models import API_VERSION, BrazeWorkspace, CdiIntegration, SecretKeyRef, WarehouseCredential

Key = tuple[str, str]  # (namespace, name)


class ManifestError(ValueError):
    """Bad input in a manifest file; the message names the file, the object, the field and the fix."""


@dataclass
class Manifests:
    secrets: dict[Key, dict[str, str]] = field(default_factory=dict)
    credentials: dict[Key, WarehouseCredential] = field(default_factory=dict)
    integrations: list[CdiIntegration] = field(default_factory=list)
    workspaces: dict[Key, BrazeWorkspace] = field(default_factory=dict)

    def integration(self, name: str | None) -> CdiIntegration:
        """The integration called `name` (or `namespace/name`); the only one when `name` is None."""
        if name is None:
            if len(self.integrations) == 1:
                return self.integrations[0]
            if not self.integrations:
                raise ManifestError("no CdiIntegration in the given files; add one (see examples/)")
            names = ", ".join(_display(i.metadata.namespace, i.metadata.name) for i in self.integrations)
            raise ManifestError(f"the files hold several CdiIntegrations ({names}); pick one with --integration NAME")
        namespace, _, short = name.rpartition("/")
        found = [
            i
            for i in self.integrations
            if i.metadata.name == short and (not namespace or i.metadata.namespace == namespace)
        ]
        if len(found) != 1:
            known = ", ".join(_display(i.metadata.namespace, i.metadata.name) for i in self.integrations) or "none"
            problem = "is ambiguous; write it as NAMESPACE/NAME" if found else "is not in the given files"
            raise ManifestError(f"--integration {name} {problem} (integrations found: {known})")
        return found[0]

    def credential_for(self, integration: CdiIntegration) -> WarehouseCredential:
        namespace = integration.metadata.namespace
        ref = integration.spec.credential_ref.name
        credential = self.credentials.get((namespace, ref))
        if credential is None:
            raise ManifestError(
                f"CdiIntegration {_display(namespace, integration.metadata.name)}: spec.credentialRef.name {ref!r} "
                f"names no WarehouseCredential in namespace {namespace!r} of the given files; add it or fix the name"
            )
        return credential

    def workspace_for(self, integration: CdiIntegration) -> BrazeWorkspace | None:
        """The BrazeWorkspace `spec.braze.workspaceRef` names; None without a reference (Braze's defaults apply)."""
        ref = integration.spec.braze.workspace_ref if integration.spec.braze is not None else None
        if ref is None:
            return None
        namespace = integration.metadata.namespace
        workspace = self.workspaces.get((namespace, ref.name))
        if workspace is None:
            raise ManifestError(
                f"CdiIntegration {_display(namespace, integration.metadata.name)}: spec.braze.workspaceRef.name "
                f"{ref.name!r} names no BrazeWorkspace in namespace {namespace!r}; add it or remove the reference"
            )
        return workspace

    def secret_value(self, namespace: str, ref: SecretKeyRef, used_by: str) -> str:
        secret = self.secrets.get((namespace, ref.name))
        if secret is None:
            raise ManifestError(
                f"{used_by} refers to Secret {_display(namespace, ref.name)}, which is not in the given files; add it "
                "(kind: Secret with stringData)"
            )
        if ref.key not in secret:
            keys = ", ".join(sorted(secret)) or "none"
            raise ManifestError(
                f"{used_by} refers to key {ref.key!r} of Secret {_display(namespace, ref.name)}, which has no such key "
                f"(keys: {keys})"
            )
        return secret[ref.key]

    def resolve_secrets(self, namespace: str, refs: Iterable[SecretKeyRef], used_by: str) -> dict[tuple[str, str], str]:
        return {(ref.name, ref.key): self.secret_value(namespace, ref, used_by) for ref in refs}


def _display(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def format_validation_error(exc: ValidationError, prefix: str) -> str:
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{prefix}: {path}: {message}")
    return "\n".join(lines)


def _decode_secret(doc: dict[str, Any], where: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            # Like the apiserver (Go's base64), ignore line breaks: `base64` wraps its output at 76 columns.
            text = str(value).replace("\r", "").replace("\n", "")
            values[str(key)] = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ManifestError(f"{where}: data.{key} is not base64 text; use stringData for plain values") from None
    for key, value in (doc.get("stringData") or {}).items():
        values[str(key)] = str(value)
    return values


def load_manifests(paths: Sequence[Path]) -> Manifests:
    manifests = Manifests()
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path} is not valid YAML: {exc}") from None
        for index, doc in enumerate(documents, start=1):
            if doc is None:
                continue
            _add_document(manifests, doc, f"{path} document {index}")
    return manifests


def _add_document(manifests: Manifests, doc: Any, where: str) -> None:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a Kubernetes object (a mapping with kind and metadata)")
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    namespace = (meta.get("namespace") if isinstance(meta, dict) else None) or "default"
    label = f"{where} ({kind} {namespace}/{name})"
    if kind == "Secret":
        manifests.secrets[(namespace, name)] = _decode_secret(doc, label)
        return
    if kind not in ("WarehouseCredential", "CdiIntegration", "BrazeWorkspace"):
        return  # other kinds (Namespaces, ConfigMaps, …) may share the file; kubectl applies them, we need not
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError(f"{label}: apiVersion must be {API_VERSION}, not {doc.get('apiVersion')!r}")
    try:
        if kind == "WarehouseCredential":
            credential = WarehouseCredential.model_validate(doc)
            manifests.credentials[(credential.metadata.namespace, credential.metadata.name)] = credential
        elif kind == "BrazeWorkspace":
            workspace = BrazeWorkspace.model_validate(doc)
            manifests.workspaces[(workspace.metadata.namespace, workspace.metadata.name)] = workspace
        else:
            manifests.integrations.append(CdiIntegration.model_validate(doc))
    except ValidationError as exc:
        raise ManifestError(format_validation_error(exc, label)) from None
