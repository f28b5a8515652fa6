"""A layer in front of fakesnow's server that refuses a key-pair login Snowflake would refuse, and queries on a
suspended warehouse.

fakesnow accepts any login. Snowflake checks the JWT of a SNOWFLAKE_JWT login against the public keys registered
for the user (RSA_PUBLIC_KEY and RSA_PUBLIC_KEY_2): the issuer names the key by its fingerprint
(`ACCOUNT.USER.SHA256:<base64 digest of the DER public key>`), the token must be signed (RS256) by that key, its
subject must be `ACCOUNT.USER` and it must not have expired. A login that fails any of this gets error 390144
("JWT token is invalid."), which the connector raises as DatabaseError(errno=390144).

The keys are registered as a user's admin does it: `ALTER USER <name> SET RSA_PUBLIC_KEY[_2]='<base64>'` and
`UNSET RSA_PUBLIC_KEY[_2]`, in any session; the gate keeps them and answers the statement itself (fakesnow has no
users). Logins with a password (the tests' setup sessions) pass unchanged; so does everything else.

fakesnow has no warehouses either: `ALTER WAREHOUSE <name> SUSPEND` (taken as suspended without AUTO_RESUME, for a
role without OPERATE) and `… RESUME` are kept by the gate, and a query in a session whose login named a suspended
warehouse gets Snowflake's 000608 "Warehouse '<name>' is suspended.".

Run as `python snowflake_keygate.py --host 127.0.0.1 --port N` (snowflake_standin.py does).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from fakesnow.server import app as fakesnow_app
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOGIN, QUERY = "/session/v1/login-request", "/queries/v1/query-request"
JWT_INVALID = "390144"
SLOTS = {"RSA_PUBLIC_KEY": 1, "RSA_PUBLIC_KEY_2": 2}
_ALTER_WAREHOUSE = re.compile(
    r"\s*ALTER\s+WAREHOUSE\s+(\"(?:[^\"]|\"\")+\"|[A-Za-z_][\w$]*)\s+(SUSPEND|RESUME)\s*;?\s*", re.I
)
_ALTER_USER = re.compile(
    r"\s*ALTER\s+USER\s+(?:IF\s+EXISTS\s+)?(\"(?:[^\"]|\"\")+\"|[A-Za-z_][\w$]*)\s+(SET|UNSET)\s+"
    r"(RSA_PUBLIC_KEY(?:_2)?)\b\s*(?:=\s*'([^']*)')?\s*;?\s*",
    re.I,
)


def user_name(identifier: str) -> str:
    """A user name as Snowflake stores it: quoted names as written, unquoted ones in upper case."""
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.upper()


def fingerprint(public_key_b64: str) -> str:
    der = base64.b64decode(public_key_b64)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


class KeyGate:
    """The registered keys, {user: {slot: base64 DER public key}}, and the ASGI app in front of fakesnow."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[int, str]] = {}
        self.suspended: set[str] = set()
        self.session_warehouse: dict[str, str] = {}  # session token -> the warehouse its login named

    def alter_warehouse(self, sql: str) -> bool:
        found = _ALTER_WAREHOUSE.fullmatch(sql)
        if found is None:
            return False
        name = user_name(found.group(1))
        if found.group(2).upper() == "SUSPEND":
            self.suspended.add(name)
        else:
            self.suspended.discard(name)
        return True

    def alter_user(self, sql: str) -> bool:
        """Apply an `ALTER USER … SET/UNSET RSA_PUBLIC_KEY[_2]`; False when `sql` is not one."""
        found = _ALTER_USER.fullmatch(sql)
        if found is None:
            return False
        user, action, slot = user_name(found.group(1)), found.group(2).upper(), SLOTS[found.group(3).upper()]
        slots = self.keys.setdefault(user, {})
        if action == "SET":
            body = "".join(line for line in (found.group(4) or "").split() if not line.startswith("-----"))
            slots[slot] = body
        else:
            slots.pop(slot, None)
        return True

    def verify(self, data: dict[str, Any]) -> str | None:
        """Why the login's JWT is refused, or None when one of the user's keys signed it."""
        token, account, login = str(data.get("TOKEN") or ""), data.get("ACCOUNT_NAME"), data.get("LOGIN_NAME")
        qualified = f"{str(account).split('.')[0].upper()}.{str(login).upper()}"
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            return f"not a JWT ({exc})"
        issuer = str(claims.get("iss", ""))
        if claims.get("sub") != qualified or not issuer.startswith(qualified + ".SHA256:"):
            return f"issuer {issuer!r} / subject {claims.get('sub')!r} do not name {qualified}"
        wanted = issuer.removeprefix(qualified + ".")
        registered = self.keys.get(str(login).upper(), {}) | self.keys.get(str(login), {})
        for public in registered.values():
            if fingerprint(public) != wanted:
                continue
            key = serialization.load_der_public_key(base64.b64decode(public))
            try:
                jwt.decode(token, key, algorithms=["RS256"], options={"require": ["exp", "iat"]})  # type: ignore[arg-type]
            except jwt.PyJWTError as exc:
                return f"signature or lifetime refused ({exc})"
            return None
        return f"no registered public key has fingerprint {wanted}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in (LOGIN, QUERY):
            await fakesnow_app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = dict(scope["headers"])
        if headers.get(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        payload = json.loads(body)
        token = headers.get(b"authorization", b"").decode()[len('Snowflake Token="') : -1]
        if scope["path"] == QUERY and self.session_warehouse.get(token) in self.suspended:
            name = self.session_warehouse[token]
            await JSONResponse(
                {
                    "data": {"errorCode": "000608", "sqlState": "57P03"},
                    "code": "000608",
                    "message": f"Warehouse '{name}' is suspended.  Use 'alter warehouse {name} resume;' command if "
                    "you need to use it again.",
                    "success": False,
                }
            )(scope, receive, send)
            return
        if scope["path"] == LOGIN:
            data = payload.get("data") or {}
            if str(data.get("AUTHENTICATOR", "")).upper() == "SNOWFLAKE_JWT":
                refused = self.verify(data)
                if refused is not None:
                    print(f"login of {data.get('LOGIN_NAME')} refused: {refused}", flush=True)
                    response = JSONResponse(
                        {
                            "data": {"nextAction": "RETRY_LOGIN", "authnMethod": "KEY_PAIR"},
                            "code": JWT_INVALID,
                            "message": f"JWT token is invalid. [{uuid.uuid4()}]",
                            "success": False,
                            "headers": None,
                        }
                    )
                    await response(scope, receive, send)
                    return
        elif self.alter_user(str(payload.get("sqlText", ""))) or self.alter_warehouse(str(payload.get("sqlText", ""))):
            payload["sqlText"] = "SELECT 'Statement executed successfully.' AS \"status\""
            body = json.dumps(payload).encode()
        forwarded = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        forwarded.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        warehouse = parse_qs(scope.get("query_string", b"").decode()).get("warehouse", [""])[0]

        async def remember_session(message: Message) -> None:
            """The login's session token, to know the warehouse of its later queries."""
            if scope["path"] == LOGIN and warehouse and message["type"] == "http.response.body":
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self.session_warehouse[json.loads(message["body"])["data"]["token"]] = user_name(warehouse)
            await send(message)

        await fakesnow_app({**scope, "headers": forwarded}, replay, remember_session)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(KeyGate(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
