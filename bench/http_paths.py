#!/usr/bin/env python3
"""Client CPU per small GetObject by four HTTP paths: where the small-file restore's CPU could go down.

    .venv/bin/python bench/http_paths.py            # 3,000 objects of 1-64 KiB, about a minute

Every path sends the same request, signed by s3backup's sigv4.py, to a local SeaweedFS, reads the whole body
and MD5s it (as a restore checks it), for the same objects:
  1. today's direct GET (direct_get.py): botocore's URLLib3Session.send, 8 threads;
  2. the urllib3 pool that session made, called directly (looked up once), 8 threads;
  3. aiohttp (a dependency of kopf, so already in the image) on one event-loop thread, 8 and 32 in flight;
  4. s3backup's own GET client (http_get.py, what the restore's loop uses) on one thread, 8 and 32 in flight.
CPU is this process's user + system time; the server is another process. A measurement, not the syncer's code:
it reaches into botocore's client (its HTTP session and credentials) the way direct_put.py does.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode
from s3backup_syncer.direct_put import _botocore_session_of
from s3backup_syncer.http_get import HttpGetPool
from s3backup_syncer.local_s3 import LocalS3
from s3backup_syncer.sigv4 import SigV4Signer
from urllib3.util.retry import Retry

OBJECTS = int(os.environ.get("OBJECTS", "3000"))
BUCKET = "paths"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, run: Callable[[], object]) -> None:
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu / OBJECTS * 1e6:,.0f} |", flush=True)


def main() -> None:
    with LocalS3() as s3:
        s3.create_bucket(BUCKET)
        client = s3.client()
        rng = random.Random(1)
        keys = [f"d{i % 20}/file-{i}.bin" for i in range(OBJECTS)]
        bodies = {key: rng.randbytes(rng.randint(1024, 65536)) for key in keys}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: client.put_object(Bucket=BUCKET, Key=key, Body=bodies[key]), keys))
        signer = SigV4Signer(client._request_signer._credentials, client.meta.region_name, "s3")
        url_prefix = client.meta.endpoint_url.rstrip("/") + f"/{BUCKET}/"
        session = _botocore_session_of(client)  # the client's own HTTP session, as direct_put.py finds it

        def url(key: str) -> str:
            return url_prefix + percent_encode(key, safe="/~")

        def via_session(key: str) -> None:
            request = AWSRequest(method="GET", url=url(key), headers=signer.sign("GET", url(key), {})).prepare()
            request.stream_output = True
            response = session.send(request)
            assert response.status_code == 200 and hashlib.md5(response.raw.read()).digest()

        pool = session._manager.connection_from_url(url_prefix)
        session._setup_ssl_cert(pool, url_prefix, session._verify)

        def via_pool(key: str) -> None:
            response = pool.urlopen("GET", f"/{BUCKET}/" + percent_encode(key, safe="/~"),
                                    headers=signer.sign("GET", url(key), {}), retries=Retry(False),
                                    assert_same_host=False, preload_content=False, decode_content=False)
            assert response.status == 200 and hashlib.md5(response.read()).digest()

        async def via_aiohttp(in_flight: int) -> None:
            slots = asyncio.Semaphore(in_flight)
            connector = aiohttp.TCPConnector(limit=in_flight)
            async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
                async def get(key: str) -> None:
                    async with slots, http.get(url(key), headers=signer.sign("GET", url(key), {})) as response:
                        assert response.status == 200 and hashlib.md5(await response.read()).digest()
                await asyncio.gather(*(get(key) for key in keys))

        async def via_http_get(in_flight: int) -> None:
            slots = asyncio.Semaphore(in_flight)
            http = HttpGetPool(url_prefix, tls=False, connect_timeout=10, read_timeout=60)

            async def get(key: str) -> None:
                async with slots:
                    answer = await http.get(url(key), signer.sign("GET", url(key), {}), max_body=1 << 20)
                    assert answer.status == 200 and hashlib.md5(answer.body).digest()
            await asyncio.gather(*(get(key) for key in keys))
            http.close()

        print(f"{OBJECTS:,} GETs of 1-64 KiB objects\n")
        print("| path | wall s | CPU s | CPU per GET µs |\n|---|---|---|---|")
        for name, get in (("1. botocore's URLLib3Session.send (today), 8 threads", via_session),
                          ("2. urllib3's pool directly, 8 threads", via_pool)):
            with ThreadPoolExecutor(8) as threads:
                measure(name, lambda get=get, threads=threads: list(threads.map(get, keys)))
        for in_flight in (8, 32):
            measure(f"3. aiohttp, one thread, {in_flight} in flight",
                    lambda in_flight=in_flight: asyncio.run(via_aiohttp(in_flight)))
        for in_flight in (8, 32):
            measure(f"4. s3backup's http_get.py, one thread, {in_flight} in flight",
                    lambda in_flight=in_flight: asyncio.run(via_http_get(in_flight)))
        with ThreadPoolExecutor(8) as threads:
            measure("1. again (warm server)", lambda: list(threads.map(via_session, keys)))


if __name__ == "__main__":
    main()
