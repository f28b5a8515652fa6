"""The management API's HTTP server on loopback: HTTPS with a certificate from a directory (as the chart mounts the
webhook's), answers in Braze's JSON shape for a missing token and unknown paths, before any Kubernetes call."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdi_operator.controller.admission import self_signed_certificate, write_certificate
from cdi_operator.controller.management_api import ManagementApi, Server, TlsFiles
from cdi_operator.controller.settings import ManagementApiSettings, SettingsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_https_with_the_mounted_certificate_and_json_errors(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(["localhost"])
    write_certificate(tmp_path, cert, key)
    port = free_port()
    kube: Any = None  # nothing here may reach Kubernetes: refused before the TokenReview
    server = Server(ManagementApi(kube), ManagementApiSettings(port=port, addr="127.0.0.1", cert_dir=str(tmp_path)))
    await server.start()
    try:
        context = ssl.create_default_context(cadata=cert.decode())
        async with aiohttp.ClientSession() as session:
            url = f"https://localhost:{port}"
            async with session.get(f"{url}/cdi/integrations", ssl=context) as response:
                assert response.status == 401
                assert "Bearer" in (await response.json())["message"]
            async with session.post(
                f"{url}/cdi/integrations/x/sync", ssl=context, headers={"Authorization": "Basic a"}
            ) as response:
                assert response.status == 401
            async with session.get(f"{url}/cdi/nothing-here", ssl=context) as response:
                assert (response.status, await response.json()) == (404, {"message": "Not Found"})
            async with session.delete(f"{url}/cdi/integrations", ssl=context) as response:
                assert (response.status, await response.json()) == (405, {"message": "Method Not Allowed"})
    finally:
        await server.stop()


def test_settings_off_by_default_and_bad_values_name_the_variable(tmp_path: Path) -> None:
    assert ManagementApiSettings.from_env({}) == ManagementApiSettings(port=0)
    on = ManagementApiSettings.from_env({"CDI_MANAGEMENT_API_PORT": "8443", "CDI_MANAGEMENT_API_ADDR": "127.0.0.1"})
    assert (on.port, on.addr, on.cert_dir) == (8443, "127.0.0.1", None)
    for env, variable in (
        ({"CDI_MANAGEMENT_API_PORT": "https"}, "CDI_MANAGEMENT_API_PORT"),
        (
            {"CDI_MANAGEMENT_API_PORT": "8443", "CDI_MANAGEMENT_API_CERT_DIR": str(tmp_path)},
            "CDI_MANAGEMENT_API_CERT_DIR",
        ),
        ({"CDI_MANAGEMENT_API_ADDR": "0.0.0.0; rm"}, "CDI_MANAGEMENT_API_ADDR"),
    ):
        with pytest.raises(SettingsError, match=variable):
            ManagementApiSettings.from_env(env)


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    old_cert, old_key = self_signed_certificate(["localhost"])
    write_certificate(tmp_path, old_cert, old_key)
    tls = TlsFiles(str(tmp_path))
    new_cert, new_key = self_signed_certificate(["localhost"])
    write_certificate(tmp_path, new_cert, new_key)
    os.utime(tmp_path / "tls.crt", (1, 1))  # a renewal within the same second still differs in mtime
    tls.reload()
    port = free_port()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port, ssl=tls.context)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl.create_default_context(cadata=new_cert.decode()), server_hostname="localhost"
        )
        writer.close()
        with pytest.raises(ssl.SSLError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=ssl.create_default_context(cadata=old_cert.decode()), server_hostname="localhost"
            )
    finally:
        server.close()
