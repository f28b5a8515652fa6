"""The CRDs in crds/ are generated from the models, structural, and carry every field of the API contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from cdi_operator.api import crds as gen
from cdi_operator.api.models import DataType, Phase, WarehouseType

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
FILES = {
    "WarehouseCredential": "cdi.ingest.dev_warehousecredentials.yaml",
    "CdiIntegration": "cdi.ingest.dev_cdiintegrations.yaml",
    "BrazeWorkspace": "cdi.ingest.dev_brazeworkspaces.yaml",
}
WITHOUT_STATUS = {"BrazeWorkspace"}  # settings a platform team writes; nothing reports back into it


def committed(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CRD_DIR / FILES[kind]).read_text(encoding="utf-8"))
    return loaded


def schema_of(kind: str) -> dict[str, Any]:
    versions = committed(kind)["spec"]["versions"]
    assert len(versions) == 1
    root: dict[str, Any] = versions[0]["schema"]["openAPIV3Schema"]
    return root


def at(root: dict[str, Any], path: str) -> dict[str, Any]:
    """The schema node at a dotted path; `[]` steps into list items."""
    node = root
    for part in path.split("."):
        items = part.endswith("[]")
        name = part.removesuffix("[]")
        assert name in node.get("properties", {}), (
            f"{path}: no field {name!r} (has {sorted(node.get('properties', {}))})"
        )
        node = node["properties"][name]
        if items:
            node = node["items"]
    return node


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node (not the property-name maps) with its path."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


# --- drift -------------------------------------------------------------------------------------------------------


def test_committed_crds_match_the_models() -> None:
    diff = gen.drift(CRD_DIR)
    assert not diff, f"crds/ is out of date with operator/cdi_operator/api/models.py; run `{gen.COMMAND}`\n{diff}"


def test_generation_is_deterministic() -> None:
    assert gen.rendered() == gen.rendered()
    assert sorted(gen.rendered()) == sorted(FILES.values())


def test_files_say_they_are_generated_and_how() -> None:
    for name in FILES.values():
        head = (CRD_DIR / name).read_text(encoding="utf-8").splitlines()[:3]
        assert any("Generated" in line for line in head)
        assert any(gen.COMMAND in line for line in head)


def test_check_reports_drift_and_exits_1(tmp_path: Path) -> None:
    out: list[str] = []
    assert gen.main(["--out", str(tmp_path)], stdout=out.append) == 0
    assert gen.main(["--out", str(tmp_path), "--check"], stdout=out.append) == 0

    path = tmp_path / FILES["CdiIntegration"]
    path.write_text(path.read_text().replace("maxItems: 50", "maxItems: 51"))
    out.clear()
    assert gen.main(["--out", str(tmp_path), "--check"], stdout=out.append) == 1
    text = "".join(out)
    assert "-                maxItems: 51" in text and "+                maxItems: 50" in text
    assert gen.COMMAND in text

    (tmp_path / FILES["WarehouseCredential"]).unlink()
    out.clear()
    assert gen.main(["--out", str(tmp_path), "--check"], stdout=out.append) == 1
    assert "(missing)" in "".join(out)


# --- structural --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FILES)
def test_schema_is_structural(kind: str) -> None:
    for path, node in walk(schema_of(kind)):
        leftovers = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "examples"} & node.keys()
        assert not leftovers, f"{kind}{path}: {leftovers}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{kind}{path}: no type"
        assert node.get("type") != "null", f"{kind}{path}"
        assert node.get("additionalProperties") is not False, f"{kind}{path}: additionalProperties: false"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind}{path}"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{kind}{path}: OpenAPI v3.0 wants a boolean {bound}"
        if node.get("type") == "object" and path != ".metadata":  # ObjectMeta is the apiserver's
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), f"{kind}{path}: an object with no fields would be pruned empty"
        for name in node.get("required", []):
            assert name in node["properties"], f"{kind}{path}: required {name!r} is not a property"


@pytest.mark.parametrize("kind", FILES)
def test_resource_shape(kind: str) -> None:
    definition = committed(kind)
    assert definition["metadata"]["name"] == f"{definition['spec']['names']['plural']}.cdi.ingest.dev"
    spec = definition["spec"]
    assert spec["group"] == "cdi.ingest.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert "cdi" not in spec["names"]["categories"], "a `cdi` category would shadow the short name `cdi`"
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    with_status = kind not in WITHOUT_STATUS
    assert version.get("subresources") == ({"status": {}} if with_status else None)
    root = version["schema"]["openAPIV3Schema"]
    assert root["required"] == ["spec"]
    assert root["properties"]["metadata"] == {"type": "object"}
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec"} | (
        {"status"} if with_status else set()
    )


def test_names_and_short_names() -> None:
    assert committed("WarehouseCredential")["spec"]["names"]["shortNames"] == ["whc"]
    assert committed("CdiIntegration")["spec"]["names"]["shortNames"] == ["cdi"]
    assert committed("WarehouseCredential")["spec"]["names"]["plural"] == "warehousecredentials"
    assert committed("CdiIntegration")["spec"]["names"]["plural"] == "cdiintegrations"


def test_printer_columns() -> None:
    def columns(kind: str) -> dict[str, tuple[str, str]]:
        version = committed(kind)["spec"]["versions"][0]
        return {c["name"]: (c["jsonPath"], c["type"]) for c in version["additionalPrinterColumns"]}

    assert columns("CdiIntegration") == {
        "Phase": (".status.phase", "string"),
        "Data Type": (".spec.dataType", "string"),
        "Schedule": (".spec.schedule", "string"),
        "Last Sync": (".status.lastSync.finishedAt", "date"),
        "Rows": (".status.lastSync.rowsSynced", "integer"),
        "Watermark": (".status.watermark.updatedAt", "date"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    assert columns("WarehouseCredential") == {
        "Type": (".spec.type", "string"),
        "Ready": ('.status.conditions[?(@.type=="Ready")].status', "string"),
        "Reason": ('.status.conditions[?(@.type=="Ready")].reason', "string"),
        "Age": (".metadata.creationTimestamp", "date"),
    }


# --- the API contract (DESIGN.md) --------------------------------------------------------------------------------

SECRET_REF = ["name", "key"]
WHC_FIELDS = [
    "spec.type",
    "spec.snowflake.account",
    "spec.snowflake.user",
    "spec.snowflake.role",
    "spec.snowflake.warehouse",
    "spec.redshift.host",
    "spec.redshift.port",
    "spec.redshift.database",
    "spec.redshift.user",
    *(f"spec.redshift.passwordSecretRef.{f}" for f in SECRET_REF),
    "spec.redshift.sshTunnel.host",
    "spec.redshift.sshTunnel.port",
    "spec.redshift.sshTunnel.user",
    *(f"spec.redshift.sshTunnel.privateKeySecretRef.{f}" for f in SECRET_REF),
    "spec.bigquery.project",
    *(f"spec.bigquery.serviceAccountKeySecretRef.{f}" for f in SECRET_REF),
    "spec.bigquery.location",
    "spec.databricks.serverHostname",
    "spec.databricks.httpPath",
    *(f"spec.databricks.accessTokenSecretRef.{f}" for f in SECRET_REF),
    "spec.databricks.catalog",
    "status.observedGeneration",
    "status.conditions[].type",
    "status.conditions[].status",
    "status.conditions[].reason",
    "status.conditions[].message",
    "status.conditions[].lastTransitionTime",
    "status.publicKey",
    "status.alterUserStatement",
]
RUN_FIELDS = ["trigger", "startedAt", "finishedAt", "rowsRead", "rowsSynced", "rowsFailed", "rowErrors"]
CDI_FIELDS = [
    "spec.credentialRef.name",
    *(f"spec.source.{f}" for f in ["database", "schema", "table", "project", "dataset", "catalog"]),
    "spec.dataType",
    "spec.schedule",
    "spec.timeZone",
    "spec.contactEmails",
    "spec.suspend",
    "spec.braze.restEndpoint",
    *(f"spec.braze.apiKeySecretRef.{f}" for f in SECRET_REF),
    "status.observedGeneration",
    "status.phase",
    "status.conditions[].type",
    "status.conditions[].status",
    "status.conditions[].reason",
    "status.conditions[].lastTransitionTime",
    "status.connectionTest.time",
    "status.connectionTest.result",
    "status.connectionTest.columns",
    "status.connectionTest.preview",
    "status.watermark.updatedAt",
    *(f"status.lastSync.{f}" for f in RUN_FIELDS),
    *(f"status.runs[].{f}" for f in RUN_FIELDS),
    "status.lastHandledSyncNow",
]


@pytest.mark.parametrize(
    ("kind", "path"), [("WarehouseCredential", p) for p in WHC_FIELDS] + [("CdiIntegration", p) for p in CDI_FIELDS]
)
def test_contract_field_present(kind: str, path: str) -> None:
    at(schema_of(kind), path)


def test_enums() -> None:
    whc, cdi = schema_of("WarehouseCredential"), schema_of("CdiIntegration")
    assert at(whc, "spec.type")["enum"] == [t.value for t in WarehouseType]
    assert {"snowflake", "redshift", "bigquery", "databricks"} <= set(at(whc, "spec.type")["enum"])
    assert at(cdi, "spec.dataType")["enum"] == [d.value for d in DataType]
    assert set(at(cdi, "spec.dataType")["enum"]) == {
        "customAttributes",
        "customEvents",
        "purchaseEvents",
        "userDeletes",
        "catalogItems",
    }
    assert (
        set(at(cdi, "status.phase")["enum"]) == {p.value for p in Phase} == {"Draft", "Active", "Suspended", "Failed"}
    )
    assert at(cdi, "status.conditions[].status")["enum"] == ["True", "False", "Unknown"]
    assert at(cdi, "status.runs[].trigger")["enum"] == ["schedule", "syncNow", "local"]


def test_defaults() -> None:
    whc, cdi = schema_of("WarehouseCredential"), schema_of("CdiIntegration")
    assert at(cdi, "spec.timeZone")["default"] == "UTC"
    assert at(cdi, "spec.suspend")["default"] is False
    assert at(whc, "spec.redshift.port")["default"] == 5439
    assert at(whc, "spec.redshift.sshTunnel.port")["default"] == 22
    assert at(cdi, "spec.braze.maxObjectsPerRequest")["default"] == 75
    workspace = schema_of("BrazeWorkspace")
    assert at(workspace, "spec.reservePercent")["default"] == 20
    assert at(workspace, "spec.limits.usersTrack")["default"] == {"requests": 3000, "seconds": 3}
    # `X | None = None` is "absent", not a null default (the apiserver refuses null defaults of non-nullable fields)
    for kind in FILES:
        for path, node in walk(schema_of(kind)):
            assert node.get("default", "") is not None, f"{kind}{path}"


def test_bounds_formats_and_free_form_values() -> None:
    cdi = schema_of("CdiIntegration")
    assert at(cdi, "spec.schedule")["maxLength"] == 200
    assert at(cdi, "spec.contactEmails")["maxItems"] == 20
    assert "pattern" in at(cdi, "spec.contactEmails[]")
    assert at(cdi, "status.runs")["maxItems"] == 50  # spec.sync.runHistory is at most 50
    assert at(cdi, "status.watermark.updatedAt")["format"] == "date-time"
    assert at(cdi, "status.lastSync.finishedAt")["format"] == "date-time"
    rate = at(cdi, "spec.braze.requestsPerSecond")
    assert (rate["minimum"], rate["exclusiveMinimum"], rate["maximum"]) == (0, True, 1000)
    assert at(cdi, "status.connectionTest.preview[]") == {
        "type": "object",
        "additionalProperties": {"x-kubernetes-preserve-unknown-fields": True, "nullable": True},
    }
    conditions = at(cdi, "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_cel_rules() -> None:
    data_type = at(schema_of("CdiIntegration"), "spec.dataType")
    assert data_type["x-kubernetes-validations"] == [
        {
            "rule": "self == oldSelf",
            "message": "dataType is immutable; create a new CdiIntegration for another data type",
        }
    ]
    rules = at(schema_of("WarehouseCredential"), "spec")["x-kubernetes-validations"]
    for kind in WarehouseType:
        assert {
            "rule": f"!has(self.{kind.value}) || self.type == '{kind.value}'",
            "message": f"spec.{kind.value} is set but spec.type is not '{kind.value}': keep only the block named "
            f"by spec.type (one of {', '.join(t.value for t in WarehouseType)})",
        } in rules
        assert f"self.type != '{kind.value}' || has(self.{kind.value})" in [r["rule"] for r in rules]
    for rule in rules:
        assert rule["message"].startswith("spec."), "messages name the field"


# --- the converter on its own ------------------------------------------------------------------------------------


class _Inner(BaseModel):
    """An inner model."""

    n: int = Field(default=1, gt=0, lt=10)


class _Toy(BaseModel):
    mapping: dict[str, int] = Field(default_factory=dict)
    anything: Any = None
    free: dict[str, Any] = Field(default_factory=dict)
    fixed: Literal["x"] = "x"
    inner: _Inner | None = Field(default=None, description="Optional inner.")
    items: list[_Inner] = Field(default_factory=list, max_length=3)


def test_converter_on_a_toy_model() -> None:
    schema = gen.structural_schema(_Toy)
    props = schema["properties"]
    assert props["mapping"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    any_value = {"x-kubernetes-preserve-unknown-fields": True, "nullable": True}
    assert props["anything"] == any_value
    assert props["free"] == {"type": "object", "additionalProperties": any_value}
    assert props["fixed"] == {"type": "string", "enum": ["x"], "default": "x", "maxLength": 1}
    assert props["inner"] == {
        "type": "object",
        "description": "Optional inner.",
        "properties": {
            "n": {
                "type": "integer",
                "default": 1,
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 10,
                "exclusiveMaximum": True,
            }
        },
    }
    assert props["items"]["items"]["description"] == "An inner model."
    assert props["items"]["maxItems"] == 3


def test_converter_refuses_what_a_crd_cannot_say() -> None:
    class Union(BaseModel):
        value: int | str

    with pytest.raises(gen.SchemaError, match=r"Union\.value: anyOf with 2 non-null variants"):
        gen.structural_schema(Union)

    class Tree(BaseModel):
        children: list[Tree] = Field(default_factory=list)

    with pytest.raises(gen.SchemaError, match="recursive model Tree"):
        gen.structural_schema(Tree)
