"""kmock's KubernetesEmulator on a real loopback port, in its own thread and event loop.

Only for what a real API server cannot be made to do on demand (tests/operator/test_client.py: faults injected
into its answers, and the operator's own requests seen as sent; tests/operator/test_shard_lifecycle.py: events
replayed, runs overtaken); everything else runs on the real control plane
(tests/cluster/). The operator under test (kopf, via KopfRunner) runs in another thread and talks to it over
HTTP, like to a kube-apiserver; the test talks to it with plain HTTP requests (`Cluster`).

Where the emulator is not a kube-apiserver (the tests assume these; see README.md, "How it is tested, and what
the tests cannot show"):
- no garbage collection: deleting an owner leaves its dependents (the tests check ownerReferences instead);
- no defaults: neither the CRD's schema defaults nor the built-in ones (the operator must not rely on them);
- GET /api/v1/namespaces cannot be parsed by kmock 0.8 (kopf's `-n` mode is tested on the real cluster only);
- no validation of bodies; no uid, resourceVersion, generation or creationTimestamp. `ApiServerLikeEmulator`
  adds the minimum kopf and the operator rely on: a new resourceVersion on every write (else kopf waits
  its consistency timeout after each own patch), uid/creationTimestamp/generation on create, and
  generation + 1 when a write to the main resource carries `spec` (even an unchanged one);
- no optimistic concurrency: resourceVersion preconditions are not checked (those sent in merge patches are
  kept in `ApiServerLikeEmulator.preconditions`, by request id, before the new version overwrites them);
- PATCH is a recursive dict merge (null deletes a key) for any dict body, a JSON patch for a list; no PUT;
- server-side apply (PATCH application/apply-patch+yaml, the operator's CronJobs) is emulated by
  `ApiServerLikeEmulator` for a single field manager only: it creates a missing object, and otherwise replaces
  the applied top-level fields (and metadata's labels, annotations, ownerReferences) with the applied ones;
  an apply that changes nothing writes nothing (no new resourceVersion), as kube-apiserver does. There are no
  managedFields, no conflicts between managers, and fields the applier does not send are dropped even when
  another writer set them: what SSA really keeps and removes is only tested on the real control plane;
- the status subresource is not separate: a PATCH of /status could change the spec and vice versa;
- label selectors are ignored on lists (the operator filters by labels itself as well);
- no controllers: CronJobs never fire, Jobs never start; nothing writes status but the test and the operator.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import kmock

BACKUPS = "s3backup.dev/v1alpha1/s3backups"
RESTORES = "s3backup.dev/v1alpha1/s3restores"
APPLY_PATCH = "application/apply-patch+yaml"
APPLIED_METADATA = ("labels", "annotations", "ownerReferences")


def _merge_diff(live: Any, desired: Any) -> Any:
    """The RFC 7386 merge patch that turns `live` into `desired` (kmock applies PATCH bodies as one)."""
    if not isinstance(live, dict) or not isinstance(desired, dict):
        return desired
    patch: dict[str, Any] = {key: None for key in live if key not in desired}
    patch.update({key: _merge_diff(live.get(key), value) for key, value in desired.items()
                  if key not in live or live[key] != value})
    return patch


def _applied(live: dict[str, Any], intent: dict[str, Any]) -> dict[str, Any]:
    """`live` after a single manager's server-side apply of `intent` (see the module docstring)."""
    result = {**live, **{key: value for key, value in intent.items() if key not in ("metadata", "status")}}
    meta = dict(live.get("metadata") or {})
    meta.update({key: value for key, value in (intent.get("metadata") or {}).items() if key in APPLIED_METADATA})
    result["metadata"] = meta
    return result


class ApiServerLikeEmulator(kmock.KubernetesEmulator):
    """The emulator, plus the metadata kube-apiserver maintains (see the module docstring)."""

    _versions = itertools.count(100)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.preconditions: dict[Any, str] = {}  # the resourceVersion a write sent, by request id

    async def _handle(self, request: kmock.Request):  # type: ignore[override]
        if request.method == "PATCH" and request.headers.get("Content-Type", "").startswith(APPLY_PATCH):
            request = self._server_side_apply(request)
            self._requests[request.id] = request  # kmock's views know requests by identity
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            version = str(next(self._versions))
            if isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                if meta.get("resourceVersion"):
                    self.preconditions[request.id] = meta["resourceVersion"]
                meta["resourceVersion"] = version
                if request.action == kmock.action.CREATE:
                    meta.setdefault("uid", str(uuid.uuid4()))
                    meta.setdefault("generation", 1)
                    meta.setdefault("creationTimestamp",
                                    datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                elif "spec" in request.data and not request.subresource:
                    key = (request.resource, request.namespace, request.name)
                    if key in self.objects:
                        meta["generation"] = int(self.objects[key].get("metadata", {}).get("generation") or 0) + 1
            elif isinstance(request.data, list):  # a JSON patch (kopf's finalizers)
                # No optimistic concurrency here: the resourceVersion precondition is dropped (the emulator
                # would answer a failed "test" with HTTP 500, where kube-apiserver answers 409/422).
                request.data[:] = [op for op in request.data
                                   if not (op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion")]
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        return await super()._handle(request)


    def _server_side_apply(self, request: kmock.Request) -> kmock.Request:
        """An apply becomes a create, a merge patch of the difference, or a plain read (nothing changed)."""
        key = (request.resource, request.namespace, request.name)
        live = self.objects[key] if key in self.objects else None  # noqa: SIM401 -- no .get()
        if live is None or live.deleted:
            return attrs.evolve(request, method="POST", action=kmock.action.CREATE, name=None)
        current = copy.deepcopy(dict(live.raw))
        desired = _applied(current, request.data)
        if desired == current:
            return attrs.evolve(request, method="GET", action=kmock.action.FETCH)
        return attrs.evolve(request, data=_merge_diff(current, desired))


class Emulator:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self.url = ""

    async def _start(self) -> None:
        self.kmock = ApiServerLikeEmulator()
        await self.kmock.__aenter__()
        self.kmock.resources.load_bundled()  # the built-in resources (pods, jobs, cronjobs, events, CRDs...)
        self.kmock.resources[BACKUPS] = kmock.ResourceInfo(
            namespaced=True, kind="S3Backup", singular="s3backup", shortnames={"s3b"},
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"},
        )
        self.kmock.resources[RESTORES] = kmock.ResourceInfo(
            namespaced=True, kind="S3Restore", singular="s3restore", shortnames={"s3r"},
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"},
        )
        self.server = kmock.Server(self.kmock)
        await self.server.__aenter__()
        self.url = str(self.server.url).rstrip("/")

    async def _stop(self) -> None:
        await self.server.__aexit__(None, None, None)
        await self.kmock.__aexit__(None, None, None)

    def __enter__(self) -> Emulator:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


class Cluster:
    """The test's own HTTP client to the emulator (what kubectl and the controllers would do)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else {}

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def items(self, path: str) -> list[dict[str, Any]]:
        return self.request("GET", path).get("items") or []

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body)


def wait_for(condition: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """Poll until `condition()` returns something truthy (and return it); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
