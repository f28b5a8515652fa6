"""The one writer of an object's status in a reconcile: fields and wanted conditions are gathered, then summarized
and patched once (Flux's deferred summarize-and-patch).

A reconcile `set`s status fields by their model names and `want`s conditions as it goes; `flush` applies the wanted
conditions to the current ones (conditions.apply keeps transition times), checks the result against the status
model (`CdiIntegrationStatus`, `WarehouseCredentialStatus`: what the CRD's schema is generated from) and sends the
fields that differ in one JSON merge patch. A reconcile flushes once at its end; only a connection test, which may
take minutes, flushes its "testing" status first so that users see it running, and a rewind (controller/rewind.py)
before a sync-now of the same reconcile starts a run. The fields the runner owns (`watermark`, `lastSync`, `runs`)
are not set here, so a merge patch does not touch them. The one exception, the record of a run its Job's deadline
stopped (controller/deadline.py), is written by `guarded`, as the runner writes its own (runner/status_store.py):
built from the status of one resourceVersion and sent with it as a precondition, so that a runner's record
written meanwhile is never replaced (a merge patch replaces `runs` whole); a conflict re-reads and builds again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from pydantic import BaseModel

from cdi_operator.api.json import JSON
from cdi_operator.controller import conditions
from cdi_operator.kube.aio import KubeApi
from cdi_operator.kube.errors import Conflict, NotFound

CONFLICT_RETRIES = 5


def merged(target: Any, patch: Any) -> Any:
    """`target` after the JSON merge patch `patch` (RFC 7386, as the API server applies it): objects merge key by key,
    null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, Enum):
        return value.value
    return value


class StatusWriter:
    """The status of one object for one reconcile (see the module docstring)."""

    def __init__(self, kube: KubeApi, plural: str, obj: JSON, model: type[BaseModel]) -> None:
        meta = obj["metadata"]
        self.kube = kube
        self.plural = plural
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.generation: int | None = meta.get("generation")
        self.resource_version: str | None = meta.get("resourceVersion")
        self.model = model
        self.written: JSON = dict(obj.get("status") or {})  # as read, then as last patched
        self._fields: JSON = {}
        self._wants: dict[str, conditions.Want] = {}
        self.on_written: Callable[[JSON], None] | None = None  # with the object the API server answered a patch with

    def _alias(self, name: str) -> str:
        """The JSON name of a field given by its model name or its JSON name."""
        fields = self.model.model_fields
        if name in fields:
            return fields[name].alias or name
        if any(f.alias == name for f in fields.values()):
            return name
        raise KeyError(f"{self.model.__name__} has no field {name!r}")

    def set(self, **fields: Any) -> None:
        """Status fields by name (`connection_test=…` or `connectionTest=…`); a model or enum is written as its JSON,
        None deletes."""
        for name, value in fields.items():
            self._fields[self._alias(name)] = _json(value)

    def want(self, wants: Iterable[conditions.Want]) -> None:
        """Conditions to set (the last wish per type wins); the others are kept as they are."""
        for want in wants:
            self._wants[want.type] = want

    def get(self, name: str) -> Any:
        """A field as it will be written: set in this reconcile, else as read."""
        alias = self._alias(name)
        return self._fields[alias] if alias in self._fields else self.written.get(alias)

    def pending(self) -> JSON:
        updates = dict(self._fields)
        if self._wants:
            updates["conditions"] = conditions.apply(
                self.written.get("conditions"), list(self._wants.values()), self.generation
            )
        return updates

    def view(self) -> JSON:
        """The whole status as it will be after `flush`."""
        merged = {**self.written, **self.pending()}
        return {k: v for k, v in merged.items() if v is not None}

    async def flush(self) -> JSON:
        """Patch what differs from the status as read (nothing when nothing does); returns the patch."""
        patch = {k: v for k, v in self.pending().items() if self.written.get(k) != v}
        self._fields, self._wants = {}, {}
        if not patch:
            return patch
        self.model.model_validate({k: v for k, v in patch.items() if v is not None})  # a bug fails here, not in etcd
        answer = None
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing left to describe
            answer = await self.kube.patch_status(self.plural, self.namespace, self.name, patch)
        self.written = merged(self.written, patch)
        if answer is not None and self.on_written is not None:
            self.on_written(answer)
        return patch

    async def guarded(self, build: Callable[[JSON], JSON | None], retries: int = CONFLICT_RETRIES) -> JSON | None:
        """Patch `build(status)`, with the resourceVersion that status was read at as a precondition; on a conflict
        re-read the object and build again (see the module docstring). `build` returning None: nothing to write.
        Returns the patch sent, or None."""
        status, version = self.written, self.resource_version
        for attempt in range(retries + 1):
            patch = build(status)
            if not patch:
                return None
            self.model.model_validate({k: v for k, v in patch.items() if v is not None})
            try:
                obj = await self.kube.patch_status(self.plural, self.namespace, self.name, patch, version)
            except Conflict:
                if attempt == retries:
                    raise
                fresh = await self.kube.get(self.plural, self.namespace, self.name)
                if fresh is None:
                    return None
                status, version = dict(fresh.get("status") or {}), fresh["metadata"].get("resourceVersion")
                continue
            except NotFound:
                return None
            self.written = dict(obj.get("status") or {})
            self.resource_version = obj["metadata"].get("resourceVersion")
            if self.on_written is not None:
                self.on_written(obj)
            return patch
        return None
