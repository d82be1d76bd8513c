"""A stand-in external identity provider: it signs access tokens with its own RSA keys and
serves their public JWK Set over real HTTP (uvicorn on a free loopback port), as Keycloak or
Entra ID would. Several tenants (`a`, `b`…) each have an issuer, keys and a JWKS URL, and it
counts how often each JWKS is fetched.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.store.client import free_port
from tests.security.live_server import serving_in_thread


def new_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex[:12], "use": "sig"})


@dataclass
class StandInIdp:
    root: str
    keys: dict[str, list[RSAKey]] = field(default_factory=dict)  # newest first
    fetches: Counter[str] = field(default_factory=Counter)

    def issuer(self, tenant: str) -> str:
        return f"{self.root}/{tenant}"

    def jwks_uri(self, tenant: str) -> str:
        return f"{self.root}/{tenant}/jwks"

    def add_tenant(self, tenant: str) -> None:
        self.keys[tenant] = [new_rsa_key()]

    def rotate(self, tenant: str) -> RSAKey:
        """A new signing key; the old one is withdrawn from the JWKS at once."""
        self.keys[tenant] = [new_rsa_key()]
        return self.keys[tenant][0]

    def jwks(self, tenant: str) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys.get(tenant, [])]}

    def token(
        self,
        tenant: str,
        *,
        key: RSAKey | None = None,
        lifetime: int = 300,
        **claims: Any,
    ) -> str:
        """An RS256 access token of `tenant`, signed by its current key unless `key` is given."""
        signer = key or self.keys[tenant][0]
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer(tenant),
            "sub": "idp-user-1",
            "azp": "portal",
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        header = {"alg": "RS256", "kid": signer.kid, "typ": "JWT"}
        return jwt.encode(header, payload, signer, algorithms=["RS256"])


def build_app(idp: StandInIdp) -> Starlette:
    async def jwks(request: Request) -> JSONResponse:
        tenant = request.path_params["tenant"]
        if tenant not in idp.keys:
            return JSONResponse({"error": "unknown tenant"}, 404)
        idp.fetches[tenant] += 1
        return JSONResponse(idp.jwks(tenant))

    return Starlette(routes=[Route("/{tenant}/jwks", jwks)])


@contextmanager
def running_idp(*tenants: str) -> Iterator[StandInIdp]:
    port = free_port()
    idp = StandInIdp(root=f"http://127.0.0.1:{port}")
    for tenant in tenants:
        idp.add_tenant(tenant)
    with serving_in_thread(build_app(idp), port, "the stand-in identity provider"):
        yield idp
