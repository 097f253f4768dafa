"""The operator's small Kubernetes client: connection settings and errors (against the emulator)."""

from __future__ import annotations

import asyncio
import base64
import ssl

import kopf
import pytest
from s3backup_operator.kube import ApiError, KubeApi, _pem, _ssl_context, namespaced


def test_paths():
    assert namespaced("batch/v1", "cronjobs", "ns") == "/apis/batch/v1/namespaces/ns/cronjobs"
    assert namespaced("v1", "pods", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert namespaced("s3backup.dev/v1alpha1", "s3backups", "ns", "b", "status") == \
        "/apis/s3backup.dev/v1alpha1/namespaces/ns/s3backups/b/status"


def test_pem_accepts_kubeconfig_base64_and_plain_pem():
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    assert _pem(pem) == pem
    assert _pem(pem.decode()) == pem
    assert _pem(base64.b64encode(pem).decode()) == pem


def test_tls_settings():
    assert _ssl_context(kopf.ConnectionInfo(server="http://127.0.0.1:1")) is False
    insecure = _ssl_context(kopf.ConnectionInfo(server="https://k8s:6443", insecure=True))
    assert isinstance(insecure, ssl.SSLContext) and insecure.verify_mode == ssl.CERT_NONE
    verified = _ssl_context(kopf.ConnectionInfo(server="https://k8s:6443"))
    assert isinstance(verified, ssl.SSLContext) and verified.verify_mode == ssl.CERT_REQUIRED


def test_auth_headers():
    api = KubeApi()
    api.connect(kopf.ConnectionInfo(server="http://x", token="t0k"))
    assert api._headers()["Authorization"] == "Bearer t0k"
    api.connect(kopf.ConnectionInfo(server="http://x", username="u", password="p"))
    assert api._headers()["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


def test_requests_against_the_emulator(emulator, cluster):
    async def scenario() -> None:
        api = KubeApi()
        with pytest.raises(ApiError, match="NotLoggedIn"):
            await api.get("/api/v1/namespaces/ns/pods/p")
        api.connect(kopf.ConnectionInfo(server=emulator.url))
        path = namespaced("v1", "configmaps", "ns")
        try:
            await api.create(path, {"metadata": {"name": "a", "namespace": "ns", "labels": {"k": "1"}}, "data": {}})
            await api.create(path, {"metadata": {"name": "b", "namespace": "ns", "labels": {"k": "2"}}, "data": {}})
            with pytest.raises(ApiError) as conflict:
                await api.create(path, {"metadata": {"name": "a", "namespace": "ns"}, "data": {"secret": "x"}})
            assert conflict.value.status == 409 and "secret" not in str(conflict.value)
            assert [item["metadata"]["name"] for item in await api.list(path, {"k": "2"})] == ["b"]
            await api.merge_patch(f"{path}/a", {"data": {"x": "1"}})
            assert (await api.get(f"{path}/a"))["data"] == {"x": "1"}
            assert await api.delete(f"{path}/a") is True
            assert await api.delete(f"{path}/a") is False
            assert await api.get_or_none(f"{path}/a") is None
        finally:
            await api.close()

    asyncio.run(scenario())
