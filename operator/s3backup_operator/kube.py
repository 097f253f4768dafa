"""A small async Kubernetes REST client over aiohttp, for the few objects the operator touches.

Its connection comes from the same `kopf.ConnectionInfo` kopf logs in with (injected: tests point it at
the emulator). Error messages carry the API's status reason and message, never request bodies.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}"[:500])
        self.status = status
        self.reason = reason


def _pem(data: str | bytes) -> bytes:
    """PEM bytes from kubeconfig-style data: base64 of PEM (`*-data` fields) or PEM itself."""
    raw = data.encode() if isinstance(data, str) else data
    return raw if b"-----BEGIN" in raw else base64.b64decode(raw)


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """TLS for the API server: its CA (file or data), optionally a client certificate, or no checks if insecure."""
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(
            cafile=str(info.ca_path) if info.ca_path else None,
            cadata=_pem(info.ca_data).decode() if info.ca_data else None,
        )
    if info.certificate_path or info.certificate_data:
        with tempfile.TemporaryDirectory() as folder:  # load_cert_chain reads files only; they go right after
            cert, key = info.certificate_path, info.private_key_path
            if info.certificate_data:
                cert = f"{folder}/cert.pem"
                with open(cert, "wb") as out:
                    out.write(_pem(info.certificate_data))
            if info.private_key_data:
                key = f"{folder}/key.pem"
                with open(key, "wb") as out:
                    out.write(_pem(info.private_key_data))
            context.load_cert_chain(cert, key)
    return context


class KubeApi:
    """GET/POST/PATCH/DELETE on API paths, JSON in and out."""

    def __init__(self) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None

    def connect(self, info: kopf.ConnectionInfo) -> None:
        """Use these credentials from now on (called from the login handler, also on re-login)."""
        self._info = info
        self._session = None  # rebuilt lazily in the operator's event loop

    def _headers(self) -> dict[str, str]:
        assert self._info is not None
        headers = {"Accept": "application/json", "User-Agent": "s3backup-operator"}
        if self._info.token:
            headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {self._info.token}"
        elif self._info.username and self._info.password:
            pair = f"{self._info.username}:{self._info.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None, *,
                      params: dict[str, str] | None = None, content_type: str = "application/json") -> Any:
        if self._info is None:
            raise ApiError(0, "NotLoggedIn", "no connection to the Kubernetes API yet")
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self._info))
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers(), timeout=aiohttp.ClientTimeout(total=30)
            )
        url = self._info.server.rstrip("/") + path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body)
        async with self._session.request(method, url, data=data, headers={"Content-Type": content_type}) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    status = json.loads(text)
                    reason, message = str(status.get("reason", "")), str(status.get("message", ""))
                except ValueError:
                    reason, message = response.reason or "", ""
                raise ApiError(response.status, reason, message.splitlines()[0] if message else "")
            return json.loads(text) if text else {}

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Items matching the labels. Also filtered here: a label selector is a hint to the server."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in label_selector.items())} if label_selector else None
        items = (await self.request("GET", path, params=params)).get("items") or []
        wanted = (label_selector or {}).items()
        return [item for item in items
                if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in wanted)]

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        """Delete; False if it was already gone."""
        try:
            await self.request("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                                "propagationPolicy": propagation})
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True


def namespaced(group_version: str, plural: str, namespace: str, name: str = "", sub: str = "") -> str:
    """API path: ("batch/v1", "cronjobs", "ns", "x") -> /apis/batch/v1/namespaces/ns/cronjobs/x."""
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{root}/namespaces/{quote(namespace)}/{plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path
