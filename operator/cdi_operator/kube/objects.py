"""Shapes of Kubernetes objects that several writers share: the owner reference that lets the garbage collector
delete what an object made."""

from __future__ import annotations

from cdi_operator.api.json import JSON


def controller_reference(api_version: str, kind: str, metadata: JSON, *, block_owner_deletion: bool = True) -> JSON:
    """The `ownerReferences` entry naming the object with this `metadata` as the controller of another."""
    reference: JSON = {
        "apiVersion": api_version,
        "kind": kind,
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
    }
    if block_owner_deletion:
        reference["blockOwnerDeletion"] = True
    return reference
