"""sigv4.py signs exactly as botocore's S3 signer does for this client's requests (remote.py's config)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode
from s3backup_syncer.sigv4 import SigV4Signer

CONFIG = Config(s3={"payload_signing_enabled": False})
KEY = percent_encode("backups/db 2026-11-30/ünï+cøde&(1).dump~", safe="/~")
CASES = [
    ("GET", f"http://127.0.0.1:8333/bucket/{KEY}", {"Range": "bytes=0-1048575",
                                                    "If-Match": '"9b2cf535f27731c974343645a3985328"'}),
    ("PUT", f"https://bucket.s3.eu-west-3.amazonaws.com/{KEY}", {
        "Content-MD5": "kAFQmDzST7DWlj99KOF/cg==", "Content-Type": "application/octet-stream",
        "x-amz-storage-class": "STANDARD_IA", "x-amz-meta-mtime": "1796027340.190036",
        "x-amz-meta-mode": "0640", "User-Agent": "Boto3/1.40 md/Botocore#1.40"}),
    ("PUT", f"https://minio.example:9000/bucket/{KEY}", {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
                                                           "x-amz-meta-note": "  two   spaces  "}),
]


def botocore_signed(method: str, url: str, headers: dict, credentials: Credentials, region: str) -> dict:
    request = AWSRequest(method=method, url=url, headers=headers)
    request.context["client_config"] = CONFIG
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////wEaDJ+session/token=="])
@pytest.mark.parametrize(("method", "url", "headers"), CASES)
def test_the_signature_is_botocores(method, url, headers, token):
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    expected = botocore_signed(method, url, headers, credentials, "eu-west-3")
    now = datetime.strptime(expected["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    signed = SigV4Signer(credentials, "eu-west-3", "s3").sign(method, url, headers, now=now)
    assert signed == expected


def test_the_cached_signing_key_follows_the_day_and_a_refreshed_secret():
    """One signer across midnight and a credentials refresh signs as a new signer would (the test above shows
    that a new one signs as botocore does)."""

    class Refreshing:
        secret = "first-secret"

        def get_frozen_credentials(self):
            return Credentials("AKID", self.secret, None).get_frozen_credentials()

    credentials = Refreshing()
    signer = SigV4Signer(credentials, "us-east-1", "s3")
    url = "http://127.0.0.1:8333/bucket/key"
    for now in (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)):
        for secret in ("first-secret", "second-secret"):
            credentials.secret = secret
            fresh = SigV4Signer(Credentials("AKID", secret, None), "us-east-1", "s3")
            assert signer.sign("GET", url, {}, now=now) == fresh.sign("GET", url, {}, now=now)


def test_a_query_string_is_refused():
    signer = SigV4Signer(Credentials("AKID", "secret", None), "us-east-1", "s3")
    with pytest.raises(ValueError, match="query"):
        signer.sign("GET", "http://127.0.0.1:8333/bucket/key?partNumber=1", {})
