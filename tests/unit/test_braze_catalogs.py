"""Catalog item endpoints: the emulator's validation and error bodies, and the client's split of a refused request.

Also `_update_existing_only: true`, which the emulator honours for users it does not know.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from cdi_operator.braze.client import CATALOG_ITEM_LIMIT, BrazeClient, BrazeError, BrazeSettings
from cdi_operator.braze.emulator import BrazeEmulator

KEY = "sk-catalog-test"
FIELDS = {"name": "string", "price": "number", "in_stock": "boolean", "tags": "array", "spec": "object"}


@pytest.fixture
def emu() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=KEY) as emulator:
        emulator.create_catalog("products", FIELDS)
        yield emulator


def client(emu: BrazeEmulator) -> BrazeClient:
    return BrazeClient(BrazeSettings(rest_endpoint=emu.url, api_key=KEY, backoff_initial=0.01, backoff_max=0.05))


def items(n: int) -> list[dict[str, Any]]:
    return [{"id": f"sku-{i}", "name": f"item {i}", "price": i} for i in range(n)]


async def raw(emu: BrazeEmulator, method: str, path: str, body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, emu.url + path, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


# --- the emulator, as BRAZE-API.md describes Braze ------------------------------------------------------------


async def test_put_creates_and_replaces_delete_removes(emu: BrazeEmulator) -> None:
    assert await raw(emu, "PUT", "/catalogs/products/items", {"items": items(2)}) == (202, {"message": "success"})
    replaced = {"id": "sku-1", "name": "new"}
    assert (await raw(emu, "PUT", "/catalogs/products/items", {"items": [replaced]}))[0] == 202
    assert emu.catalog_items("products") == {"sku-0": items(1)[0], "sku-1": replaced}, "PUT replaces the whole item"
    assert (await raw(emu, "DELETE", "/catalogs/products/items", {"items": [{"id": "sku-0"}]}))[0] == 202
    assert list(emu.catalog_items("products")) == ["sku-1"]


async def test_unknown_catalog_is_404_catalog_not_found(emu: BrazeEmulator) -> None:
    status, body = await raw(emu, "PUT", "/catalogs/nope/items", {"items": items(1)})
    assert status == 404
    assert body["message"] == "Invalid Request"
    assert [e["id"] for e in body["errors"]] == ["catalog-not-found"]


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"name": "no id"}, "items-missing-ids"),
        ({"id": 7}, "ids-not-strings"),
        ({"id": "x" * 251}, "ids-too-large"),
        ({"id": "a b"}, "invalid-ids"),
        ({"id": "sku-0"}, "ids-not-unique"),
        ({"id": "ok", "colour": "red"}, "invalid-fields"),
        ({"id": "ok", "spec": {"a.b": 1}}, "invalid-keys-in-value-object"),
        ({"id": "ok", "name": "y" * 5001}, "items-too-large"),
        ({"id": "ok", "price": "cheap"}, "unable-to-coerce-value"),
    ],
)
async def test_one_bad_item_refuses_the_request(emu: BrazeEmulator, item: dict[str, Any], code: str) -> None:
    status, body = await raw(emu, "PUT", "/catalogs/products/items", {"items": [*items(1), item]})
    assert status == 400
    assert code in [e["id"] for e in body["errors"]]
    assert emu.catalog_items("products") == {}, "nothing of a refused request is applied"


async def test_too_deep_and_too_many(emu: BrazeEmulator) -> None:
    deep: Any = 1
    for _ in range(51):
        deep = {"a": deep}
    status, body = await raw(emu, "PUT", "/catalogs/products/items", {"items": [{"id": "d", "spec": deep}]})
    assert (status, body["errors"][0]["id"]) == (400, "too-deep-nesting-in-value-object")
    status, body = await raw(emu, "PUT", "/catalogs/products/items", {"items": items(51)})
    assert (status, body["errors"][0]["id"]) == (400, "request-includes-too-many-items")


async def test_catalogs_lists_fields(emu: BrazeEmulator) -> None:
    async with client(emu) as braze:
        listed = await braze.catalogs()
    assert listed == {"products": {"id": "string", **FIELDS}}


# --- the client ---------------------------------------------------------------------------------------------------


async def test_a_bad_item_is_isolated_and_the_other_49_delivered(emu: BrazeEmulator) -> None:
    batch = items(CATALOG_ITEM_LIMIT)
    batch[17] = {"id": "sku-17", "name": "bad", "colour": "red"}
    async with client(emu) as braze:
        result = await braze.catalog_put("products", batch)
    assert list(result.errors) == [17]
    assert result.errors[17].startswith("invalid-fields: ")
    assert len(emu.catalog_items("products")) == 49
    assert "sku-17" not in emu.catalog_items("products")


async def test_delete_by_ids(emu: BrazeEmulator) -> None:
    async with client(emu) as braze:
        await braze.catalog_put("products", items(3))
        result = await braze.catalog_delete("products", ["sku-0", "sku-2"])
    assert (result.status, result.errors) == (202, {})
    assert list(emu.catalog_items("products")) == ["sku-1"]


async def test_catalog_not_found_is_sync_level(emu: BrazeEmulator) -> None:
    async with client(emu) as braze:
        with pytest.raises(BrazeError) as raised:
            await braze.catalog_put("missing", items(2))
    assert raised.value.reason == "CatalogNotFound"
    assert "got HTTP 404 CatalogNotFound" in raised.value.message
    assert "spec.catalog.name" in raised.value.message


async def test_out_of_space_is_sync_level_not_split(emu: BrazeEmulator) -> None:
    emu.catalog_storage_limit = 10
    async with client(emu) as braze:
        await braze.catalog_put("products", items(10))
        with pytest.raises(BrazeError) as raised:
            await braze.catalog_put("products", [{"id": "one-more"}])
    assert raised.value.reason == "CatalogOutOfSpace"
    assert len([r for r in emu.requests() if r.status == 400]) == 1, "a sync-level error is never split"


async def test_catalog_requests_are_paced_apart_from_track(emu: BrazeEmulator) -> None:
    settings = BrazeSettings(rest_endpoint=emu.url, api_key=KEY, requests_per_second=1000)
    braze = BrazeClient(settings)
    assert braze._budgets["catalog"].limit == 16_000 and braze._budgets["track"].limit == 3_000
    assert braze._bucket._interval == pytest.approx(1 / 1000)


# --- update existing users only -------------------------------------------------------------------------------------


async def test_update_existing_only_skips_unknown_users(emu: BrazeEmulator) -> None:
    emu.add_profile("known", {"plan": "free"})
    async with client(emu) as braze:
        objects = [
            {"external_id": "known", "plan": "pro", "_update_existing_only": True},
            {"external_id": "stranger", "plan": "pro", "_update_existing_only": True},
        ]
        await braze.track("attributes", objects)
    assert emu.profiles == {"known": {"plan": "pro"}}
    assert [o["external_id"] for o in emu.skipped] == ["stranger"]
    assert emu.tracked("attributes") == objects, "both were received, flag included"


async def test_admin_api_for_subprocess_users(emu: BrazeEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        for body in (
            {"name": "shops", "fields": {"city": "string"}, "items": [{"id": "s1", "city": "Porto"}]},
            {"storage_limit": 5},
            {"name": "products", "delete": True},
        ):
            async with session.post(emu.url + "/_emulator/catalogs", json=body) as resp:
                assert resp.status == 200, await resp.text()
        async with session.get(emu.url + "/_emulator/state") as resp:
            state = await resp.json()
    assert state["catalogs"] == {
        "shops": {"fields": {"city": "string"}, "items": {"s1": {"id": "s1", "city": "Porto"}}}
    }
    assert emu.catalog_storage_limit == 5
