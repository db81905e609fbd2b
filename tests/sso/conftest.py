"""The fixtures of tests/sso: the OIDC provider of tests/oidc and the policies naming it, and the
one Chromium every browser test shares (with the test certificate it trusts). The
helpers the suites share are in sso_shared.py (a module name of its own: every suite's conftest
is a module named `conftest`, and the last one loaded would win an import of that name).
"""

from __future__ import annotations

import os
import shutil

import pytest
from playwright.sync_api import sync_playwright
from sso_shared import *  # noqa: F403 (the helpers, for `harness.sso_helpers`)
from sso_shared import CALLBACK, POLICY, Provider, start_idp
from tls_site import DOMAIN, Certificate, make_certificate

CHROMIUM_INSTALL_HINT = "apt-get install -y --no-install-recommends chromium"
NAVIGATION_TIMEOUT_MS = 30_000  # a hang guard: a login takes well under a second


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


def chromium_binary() -> str:
    """$CHROMIUM_BIN, else Debian's chromium; a clear failure when it is missing."""
    binary = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"chromium not found (set CHROMIUM_BIN, or install Debian's package: {CHROMIUM_INSTALL_HINT})")
    return binary


@pytest.fixture(scope="session")
def test_certificate(tmp_path_factory) -> Certificate:
    """The wildcard `*.sso.test` certificate every TLS site of the browser tests serves."""
    return make_certificate(tmp_path_factory.mktemp("certificate"))


@pytest.fixture(scope="session")
def chromium(test_certificate):
    """One Chromium for every browser test (Playwright launches Debian's binary; it downloads none).
    It trusts the test certificate by its key and resolves only `*.sso.test`, to 127.0.0.1."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_binary(),
            headless=True,
            args=[
                f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={test_certificate.spki_sha256}",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def context(chromium):
    """A fresh browser profile (no cookies) for one test."""
    context = chromium.new_context()
    context.set_default_timeout(NAVIGATION_TIMEOUT_MS)
    yield context
    context.close()
