"""Headless Chromium for the tests that look at pages in a real browser.

Chromium and its driver come from the distribution's packages (``/usr/bin/chromium``,
``/usr/bin/chromedriver``, installed by ``scripts/setup.sh``) and are driven by
Selenium; nothing is downloaded.  Without them a test is skipped, except in CI,
where it fails.  Screenshots go under ``test-artifacts/`` at the top of the
repository (git ignores the folder; each run replaces them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"


def chrome(home: Path) -> Any:
    """Headless Chromium keeping its profile and temporary files in ``home``."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        message = "chromium and chromium-driver are not installed (scripts/setup.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--ignore-certificate-errors",  # the dev broker's own CA, on loopback
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={home / 'profile'}",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(
        executable_path=CHROMEDRIVER, env={**os.environ, "TMPDIR": str(home)}
    )
    return webdriver.Chrome(options=options, service=service)
