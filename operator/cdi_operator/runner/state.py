"""Where a sync keeps its watermark and run history: a small protocol, a local JSON file behind it for now.

In a pod the same protocol is served by the CR status (see the controller); locally by `--state PATH`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from cdi_operator.api.models import RunSummary, Watermark

RUN_HISTORY = 10
_FIX = "restore it from a backup or delete it to sync everything again"


class CheckpointDeferred(Exception):
    """A checkpoint could not be written for now (the store is overloaded or unreachable); a later one carries the
    same progress, so a sync goes on delivering and only its last checkpoint must succeed."""


class StateStore(Protocol):
    def load_watermark(self) -> Watermark | None: ...

    def save_watermark(self, watermark: Watermark) -> None:
        """Durably record progress; called at checkpoints during a sync and at its end. Raises CheckpointDeferred
        when it cannot for the moment."""
        ...

    def record_run(self, summary: RunSummary) -> None: ...


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"


class StateFileError(Exception):
    """The state file exists but cannot be used; the message says which file and what to do."""


class JsonFileStore:
    """One JSON file holding the state of any number of integrations, keyed by `namespace/name`.

    Every write replaces the file atomically, so a crash mid-write leaves the previous checkpoint intact.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"integrations": {}}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateFileError(
                f"state file {self.path} is not valid JSON ({exc.msg} at line {exc.lineno}); restore it from a backup "
                "or delete it to sync everything again"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("integrations"), dict):
            raise StateFileError(f"state file {self.path} is not a cdi state file; pass another --state path")
        return data

    def _entry(self, data: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = data["integrations"].setdefault(self.key, {})
        if not isinstance(entry, dict):
            raise StateFileError(f"state file {self.path}: the entry of {self.key} is not an object; {_FIX}")
        return entry

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_watermark(self) -> Watermark | None:
        raw = self._entry(self._read()).get("watermark")
        try:
            return None if raw is None else Watermark.model_validate(raw)
        except ValidationError as exc:
            raise StateFileError(
                f"state file {self.path}: {self.key} has an invalid watermark ({_first(exc)}); {_FIX}"
            ) from None

    def save_watermark(self, watermark: Watermark) -> None:
        data = self._read()
        self._entry(data)["watermark"] = watermark.model_dump(mode="json", by_alias=True)
        self._write(data)

    def record_run(self, summary: RunSummary) -> None:
        data = self._read()
        entry = self._entry(data)
        runs = [summary.model_dump(mode="json", by_alias=True, exclude_none=True), *entry.get("runs", [])]
        entry["runs"] = runs[:RUN_HISTORY]
        self._write(data)

    def runs(self) -> list[RunSummary]:
        try:
            return [RunSummary.model_validate(r) for r in self._entry(self._read()).get("runs", [])]
        except ValidationError as exc:
            raise StateFileError(
                f"state file {self.path}: {self.key} has an invalid run ({_first(exc)}); {_FIX}"
            ) from None
