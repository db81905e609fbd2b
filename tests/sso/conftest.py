"""The fixtures of tests/sso: the OIDC provider of tests/oidc and the policies naming it. The
helpers the suites share are in sso_shared.py (a module name of its own: every suite's conftest
is a module named `conftest`, and the last one loaded would win an import of that name).
"""

from __future__ import annotations

import pytest
from sso_shared import *  # noqa: F403 (the helpers, for `harness.sso_helpers`)
from sso_shared import CALLBACK, POLICY, Provider, start_idp


@pytest.fixture(scope="session")
def provider(tmp_path_factory) -> Provider:
    work = tmp_path_factory.mktemp("sso")
    idp = start_idp(work / "idp.log", sso_redirect_uri=CALLBACK)
    (work / "policies").mkdir()
    (work / "policies" / "people.yaml").write_text(POLICY.format(issuer=idp.issuer))
    secret = work / "client-secret"
    secret.write_text("sso-secret\n")
    yield Provider(idp, work / "policies", secret)
    assert idp.stop() == 0
