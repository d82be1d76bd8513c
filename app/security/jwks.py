"""Fetching and caching remote JWK Sets (a client's `jwks_uri`, an external IdP's keys).

The cache is per process on purpose: it holds only public keys fetched from elsewhere, and
every instance may fetch its own copy. An unknown `kid` may mean the owner rotated its keys,
so callers retry once with `refresh=True`; refreshes are rate-limited per URL so forged kids
cannot turn Hestia into a request amplifier.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

CACHE_SECONDS = 300
MIN_REFRESH_SECONDS = 10
_MAX_BYTES = 256 * 1024


class JwksError(Exception):
    """The JWK Set could not be fetched or is not one."""


class JwksCache:
    def __init__(self, *, timeout: float = 5.0) -> None:
        self._entries: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._timeout = timeout

    async def get(
        self, url: str, *, refresh: bool = False, min_refresh: float = MIN_REFRESH_SECONDS
    ) -> Mapping[str, Any]:
        """The JWK Set at `url`: cached for CACHE_SECONDS; `refresh` refetches it unless it
        was fetched less than `min_refresh` seconds ago."""
        now = time.monotonic()
        cached = self._entries.get(url)
        if cached is not None:
            fetched_at, jwks = cached
            fresh = now - fetched_at < CACHE_SECONDS
            too_soon = now - fetched_at < min_refresh
            if (fresh and not refresh) or too_soon:
                return jwks
        jwks = await self._fetch(url)
        self._entries[url] = (now, jwks)
        return jwks

    async def _fetch(self, url: str) -> Mapping[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
                response = await http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise JwksError(f"cannot fetch {url}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise JwksError(f"{url} answered {response.status_code}")
        if len(response.content) > _MAX_BYTES:
            raise JwksError(f"{url} returned more than {_MAX_BYTES} bytes")
        try:
            data = response.json()
        except ValueError as exc:
            raise JwksError(f"{url} did not return JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise JwksError(f"{url} did not return a JWK Set")
        return data
