"""The CustomResourceDefinitions of cdi.ingest.dev, generated from the pydantic models in `models.py`.

The models are the single source of field names, types, defaults, bounds and descriptions. This module turns their
JSON schema into the structural OpenAPI v3 schema the apiserver requires and adds only what is Kubernetes-specific:
the CEL rules (keyed by field path, and checked to exist), printer columns, names and subresources.

    python -m cdi_operator.api.crds [--out crds/]     write the CRD files
    python -m cdi_operator.api.crds --check           exit 1 with a diff when the files in crds/ have drifted

Notes on the conversion:

- `X | None` becomes plain `X` without `nullable`: the apiserver prunes an explicit `null` of a non-nullable field
  before validation, so `null` and "absent" both mean `None`, as they do for the models, and CEL's `has()` is
  false for both.
- `extra="forbid"` (`additionalProperties: false`) cannot be said in a structural schema; the apiserver prunes
  unknown fields instead, and kubectl's strict field validation reports them to the user.
- Free-form values (`Any`, the values of `dict[str, Any]`) get `x-kubernetes-preserve-unknown-fields: true` and
  `nullable: true`, so that the apiserver keeps them as they are, nulls included.
- `default_factory` values are not in the JSON schema, so the apiserver leaves those fields absent (the models
  fill them when they read the object).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cdi_operator.api.json import JSON
from cdi_operator.api.models import (
    _EMAIL,
    CDI_PLURAL,
    GROUP,
    VERSION,
    WHC_PLURAL,
    WORKSPACE_PLURAL,
    BrazeWorkspace,
    CdiIntegration,
    WarehouseCredential,
    WarehouseType,
)

COMMAND = "python -m cdi_operator.api.crds --out crds/"
DEFAULT_OUT = Path("crds")
# `cdi` is the short name of CdiIntegration. kubectl expands categories before short names, so a category called
# `cdi` would turn `kubectl get cdi` into a listing of both kinds.
CATEGORIES = ["cdi-ingest"]

# JSON Schema keywords a structural schema may carry, and what we map the rest to.
_ALLOWED_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "description",
        "default",
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "multipleOf",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "nullable",
        "example",
    }
)
_DROPPED_KEYWORDS = frozenset({"title", "$defs", "definitions", "examples", "$schema", "deprecated"})


# A free-form value (`Any`): kept as it is, including null (a non-nullable null would be pruned by the apiserver,
# so a preview cell that is NULL in the warehouse would vanish from the row).
_ANY_VALUE: JSON = {"x-kubernetes-preserve-unknown-fields": True, "nullable": True}


class SchemaError(ValueError):
    """The models' JSON schema has something a CRD cannot express; the message names the path."""


# --- JSON schema → structural OpenAPI v3 -----------------------------------------------------------------------


def structural_schema(model: type[BaseModel]) -> JSON:
    """The model's validation JSON schema (camelCase) as a structural OpenAPI v3 schema."""
    source = model.model_json_schema(by_alias=True, mode="validation")
    defs: Mapping[str, JSON] = source.get("$defs", {})
    return _convert(source, defs, path=model.__name__, seen=())


def _resolve_ref(ref: str, defs: Mapping[str, JSON], path: str) -> tuple[str, JSON]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaError(f"{path}: cannot resolve $ref {ref!r}")
    name = ref[len(prefix) :]
    return name, defs[name]


def _convert(node: Mapping[str, Any], defs: Mapping[str, JSON], path: str, seen: tuple[str, ...]) -> JSON:
    node = dict(node)
    base: JSON = {}

    ref = node.pop("$ref", None)
    if ref is not None:
        name, target = _resolve_ref(ref, defs, path)
        if name in seen:
            raise SchemaError(f"{path}: recursive model {name} cannot be inlined into a CRD schema")
        base = _convert(target, defs, path, (*seen, name))

    for combinator in ("anyOf", "oneOf", "allOf"):
        variants = node.pop(combinator, None)
        if variants is None:
            continue
        non_null = [v for v in variants if v != {"type": "null"}]
        if len(non_null) != 1:
            raise SchemaError(
                f"{path}: {combinator} with {len(non_null)} non-null variants has no structural form; "
                "use one type (plus None) per field"
            )
        base = _merge(base, _convert(non_null[0], defs, path, seen))  # `X | None`: absent (or null) means None

    out: JSON = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key == "type" and value == "null":
            raise SchemaError(f"{path}: a field that can only be null has no place in a CRD")
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}", seen) for name, sub in value.items()}
        elif key == "items":
            if not isinstance(value, dict):
                raise SchemaError(f"{path}: tuple-typed items (prefixItems) have no structural form")
            out[key] = _convert(value, defs, f"{path}[]", seen)
        elif key == "additionalProperties":
            if value is False:
                continue  # extra="forbid": structural schemas prune unknown fields instead
            if value is True or value == {}:
                out[key] = dict(_ANY_VALUE)  # dict[str, Any]
            else:
                out[key] = _convert(value, defs, f"{path}{{}}", seen)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020-12 gives the bound itself; OpenAPI v3.0 a flag next to minimum/maximum.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default" and value is None:
            continue
        elif key in _ALLOWED_KEYWORDS:
            out[key] = copy.deepcopy(value)
        else:
            raise SchemaError(f"{path}: JSON schema keyword {key!r} has no CRD equivalent; drop it or map it here")

    result = _merge(base, out)
    if "type" not in result:
        if result.get("properties"):
            result["type"] = "object"
        else:
            result.update(_ANY_VALUE)  # `Any`
    if result.get("type") == "object" and "properties" not in result and "additionalProperties" not in result:
        result["x-kubernetes-preserve-unknown-fields"] = True
    if result.get("type") == "string" and "enum" in result and "maxLength" not in result:
        # Redundant with the enum for validation, but it bounds the estimated cost of CEL rules on the field.
        result["maxLength"] = max(len(str(v)) for v in result["enum"])
    return result


def _merge(base: JSON, overlay: JSON) -> JSON:
    """`base` with the keys of `overlay` on top (a `$ref`'s siblings such as description or default win)."""
    merged = dict(base)
    merged.update(overlay)
    return merged


# --- Kubernetes-specific additions, keyed by field path ------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    rule: str
    message: str

    def as_dict(self) -> JSON:
        return {"rule": self.rule, "message": self.message}


def _warehouse_block_rules() -> list[Rule]:
    """Exactly one warehouse block, the one named by spec.type (models.WarehouseCredentialSpec says the same)."""
    kinds = [t.value for t in WarehouseType]
    rules = [
        Rule(
            rule=f"!has(self.{kind}) || self.type == '{kind}'",
            message=f"spec.{kind} is set but spec.type is not '{kind}': keep only the block named by spec.type "
            f"(one of {', '.join(kinds)})",
        )
        for kind in kinds
    ]
    rules += [
        Rule(
            rule=f"self.type != '{kind}' || has(self.{kind})",
            message=f"spec.type is '{kind}': add the spec.{kind} block with its connection settings",
        )
        for kind in kinds
    ]
    return rules


@dataclass(frozen=True)
class Kind:
    model: type[BaseModel]
    plural: str
    short_names: list[str]
    printer_columns: list[JSON]
    # dotted path below the resource root ("spec.dataType", "spec.contactEmails[]") → rules / extra keywords
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    extra: dict[str, JSON] = field(default_factory=dict)
    # lists whose items are merged by key under server-side apply: path → key fields
    list_maps: dict[str, list[str]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.model.__name__

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_READY = '.status.conditions[?(@.type=="Ready")]'

KINDS: tuple[Kind, ...] = (
    Kind(
        model=WarehouseCredential,
        plural=WHC_PLURAL,
        short_names=["whc"],
        printer_columns=[
            {"name": "Type", "type": "string", "jsonPath": ".spec.type", "description": "Warehouse type."},
            {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
            {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason"},
            _AGE,
        ],
        rules={"spec": _warehouse_block_rules()},
        list_maps={"status.conditions": ["type"]},
    ),
    Kind(
        model=CdiIntegration,
        plural=CDI_PLURAL,
        short_names=["cdi"],
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Data Type", "type": "string", "jsonPath": ".spec.dataType"},
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {
                "name": "Last Sync",
                "type": "date",
                "jsonPath": ".status.lastSync.finishedAt",
                "description": "When the last sync finished.",
            },
            {
                "name": "Rows",
                "type": "integer",
                "jsonPath": ".status.lastSync.rowsSynced",
                "description": "Rows the last sync delivered to Braze.",
            },
            {
                "name": "Watermark",
                "type": "date",
                "jsonPath": ".status.watermark.updatedAt",
                "description": "Every row updated up to this time has been delivered.",
            },
            _AGE,
        ],
        rules={
            "spec.dataType": [
                Rule(
                    rule="self == oldSelf",
                    message="dataType is immutable; create a new CdiIntegration for another data type",
                )
            ],
            "spec.catalog": [
                Rule(
                    rule="self == oldSelf",
                    message="catalog is immutable; create a new CdiIntegration for another Braze catalog",
                )
            ],
            "spec": [
                Rule(
                    rule="self.dataType != 'catalogItems' || has(self.catalog)",
                    message="dataType catalogItems needs spec.catalog.name: the Braze catalog to fill",
                ),
                Rule(
                    rule="!has(self.catalog) || self.dataType == 'catalogItems'",
                    message="spec.catalog is for dataType catalogItems only; remove it",
                ),
                Rule(  # models.CdiIntegrationSpec: a rule of spec.notifications beyond onSyncError needs someone
                    rule="(has(self.contactEmails) && size(self.contactEmails) > 0) || !has(self.notifications) || "
                    "(!has(self.notifications.rowErrorRatePercent) && !self.notifications.onSuccess && "
                    "!self.notifications.onSuccessWithoutChanges)",
                    message="spec.notifications e-mails spec.contactEmails, which is empty; add an address there or "
                    "remove the rule",
                ),
            ],
        },
        extra={
            # models.CdiIntegrationSpec checks the addresses in a validator; the same check, for the apiserver.
            "spec.contactEmails[]": {"pattern": _EMAIL.pattern, "maxLength": 254},
        },
        list_maps={"status.conditions": ["type"]},
    ),
    Kind(
        model=BrazeWorkspace,
        plural=WORKSPACE_PLURAL,
        short_names=["bzw"],
        printer_columns=[
            {"name": "Reserve %", "type": "integer", "jsonPath": ".spec.reservePercent"},
            {"name": "Track Limit", "type": "integer", "jsonPath": ".spec.limits.usersTrack.requests"},
            {"name": "Per s", "type": "integer", "jsonPath": ".spec.limits.usersTrack.seconds"},
            _AGE,
        ],
    ),
)


def _at(root: JSON, path: str, kind: str) -> JSON:
    """The schema node at a dotted path ("spec.source.table", "spec.contactEmails[]"); SchemaError if absent."""
    node = root
    for part in path.split("."):
        items = part.endswith("[]")
        name = part[:-2] if items else part
        properties = node.get("properties", {})
        if name not in properties:
            raise SchemaError(f"{kind}: no field {path!r} in the model (renamed?); update crds.py")
        node = properties[name]
        if items:
            if "items" not in node:
                raise SchemaError(f"{kind}: field {path!r} is not a list")
            node = node["items"]
    return node


def resource_schema(kind: Kind) -> JSON:
    """The openAPIV3Schema of one kind."""
    schema = structural_schema(kind.model)
    properties = schema["properties"]
    properties["apiVersion"] = {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object.",
    }
    properties["kind"] = {
        "type": "string",
        "description": "Kind is a string value representing the REST resource this object represents.",
    }
    properties["metadata"] = {"type": "object"}  # the apiserver owns ObjectMeta
    schema["required"] = [name for name in schema.get("required", []) if name not in ("apiVersion", "kind", "metadata")]
    if "spec" not in schema["required"]:
        raise SchemaError(f"{kind.kind}: spec must be required")

    for path, rules in kind.rules.items():
        node = _at(schema, path, kind.kind)
        node.setdefault("x-kubernetes-validations", []).extend(r.as_dict() for r in rules)
    for path, extra in kind.extra.items():
        _at(schema, path, kind.kind).update(extra)
    for path, keys in kind.list_maps.items():
        node = _at(schema, path, kind.kind)
        item = node["items"]
        missing = [k for k in keys if k not in item.get("required", []) and "default" not in item["properties"][k]]
        if missing:
            raise SchemaError(f"{kind.kind}: list-map key(s) {missing} of {path} must be required or defaulted")
        node["x-kubernetes-list-type"] = "map"
        node["x-kubernetes-list-map-keys"] = list(keys)
    return schema


def crd(kind: Kind) -> JSON:
    """The CustomResourceDefinition of one kind."""
    schema = resource_schema(kind)
    version: JSON = {"name": VERSION, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
    if "status" in schema["properties"]:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = [dict(c) for c in kind.printer_columns]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.name, "labels": {"app.kubernetes.io/part-of": "cdi-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": list(CATEGORIES),
            },
            "versions": [version],
        },
    }


def crds() -> list[JSON]:
    """The CustomResourceDefinitions, WarehouseCredential first."""
    return [crd(kind) for kind in KINDS]


# --- Files -------------------------------------------------------------------------------------------------------


def file_name(definition: Mapping[str, Any]) -> str:
    return f"{GROUP}_{definition['spec']['names']['plural']}.yaml"


def render(definition: Mapping[str, Any]) -> str:
    """One CRD as YAML with a header; sorted keys, so the text depends only on the models."""
    header = (
        "# Generated from operator/cdi_operator/api/models.py by operator/cdi_operator/api/crds.py. Do not edit.\n"
        f"# Regenerate with: {COMMAND}\n"
    )
    body = yaml.safe_dump(dict(definition), sort_keys=True, default_flow_style=False, allow_unicode=True, width=100)
    return header + body


def rendered() -> dict[str, str]:
    """File name → content of every CRD file."""
    return {file_name(d): render(d) for d in crds()}


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drift(out: Path) -> str:
    """A unified diff between the files in `out` and freshly generated ones; empty when they agree."""
    chunks: list[str] = []
    for name, text in rendered().items():
        path = out / name
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            chunks.extend(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"{path} (committed)" if path.exists() else f"{path} (missing)",
                    tofile=f"{path} (generated)",
                )
            )
    return "".join(chunks)


def main(argv: Sequence[str] | None = None, stdout: Callable[[str], object] = sys.stdout.write) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdi_operator.api.crds", description="Generate the CRDs in crds/ from the pydantic models."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the CRD files (default: crds/)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 with a diff when the files differ from the models"
    )
    args = parser.parse_args(argv)
    if args.check:
        diff = drift(args.out)
        if diff:
            stdout(diff)
            stdout(f"\nThe CRDs in {args.out}/ are out of date with the models; regenerate with: {COMMAND}\n")
            return 1
        stdout(f"The CRDs in {args.out}/ match the models.\n")
        return 0
    for path in write(args.out):
        stdout(f"wrote {path}\n")
    return 0


__all__ = [
    "COMMAND",
    "KINDS",
    "Kind",
    "Rule",
    "SchemaError",
    "crd",
    "crds",
    "drift",
    "main",
    "render",
    "rendered",
    "resource_schema",
    "structural_schema",
    "write",
]

if __name__ == "__main__":
    raise SystemExit(main())
