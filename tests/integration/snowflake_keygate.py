"""A layer in front of fakesnow's server that refuses a key-pair login Snowflake would refuse.

fakesnow accepts any login. Snowflake checks the JWT of a SNOWFLAKE_JWT login against the public keys registered
for the user (RSA_PUBLIC_KEY and RSA_PUBLIC_KEY_2): the issuer names the key by its fingerprint
(`ACCOUNT.USER.SHA256:<base64 digest of the DER public key>`), the token must be signed (RS256) by that key, its
subject must be `ACCOUNT.USER` and it must not have expired. A login that fails any of this gets error 390144
("JWT token is invalid."), which the connector raises as DatabaseError(errno=390144).

The keys are registered as a user's admin does it: `ALTER USER <name> SET RSA_PUBLIC_KEY[_2]='<base64>'` and
`UNSET RSA_PUBLIC_KEY[_2]`, in any session; the gate keeps them and answers the statement itself (fakesnow has no
users). Logins with a password (the tests' setup sessions) pass unchanged; so does everything else.

Run as `python snowflake_keygate.py --host 127.0.0.1 --port N` (snowflake_standin.py does).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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
        elif self.alter_user(str(payload.get("sqlText", ""))):
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

        await fakesnow_app({**scope, "headers": forwarded}, replay, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(KeyGate(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
