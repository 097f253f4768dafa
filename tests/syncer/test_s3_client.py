"""The S3 client's model loader (remote.py): services found on demand answer as botocore's full list does."""

from __future__ import annotations

import botocore.exceptions
import botocore.session
import pytest
from botocore.loaders import Loader
from s3backup_syncer.remote import _model_loader


@pytest.mark.parametrize("type_name", ["service-2", "endpoint-rule-set-1", "paginators-1"])
def test_the_services_found_on_demand_are_botocores_own(type_name):
    found = _model_loader(None).list_available_services(type_name)
    full = Loader().list_available_services(type_name)
    assert {"s3", "sts"} <= set(full)
    assert all(name in found for name in full)
    assert not any(name in found for name in ("no-such-service", "", "../s3", "s3/2006-03-01", 3))
    assert list(found) == full and len(found) == len(full) and found[0] == full[0]


def test_an_unknown_service_is_still_refused_with_botocores_error():
    session = botocore.session.get_session()
    session.register_component("data_loader", _model_loader(None))
    with pytest.raises(botocore.exceptions.UnknownServiceError, match=r"Valid service names are: .*s3"):
        session.create_client("no-such-service", region_name="us-east-1")
