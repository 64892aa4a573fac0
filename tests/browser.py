"""Headless Chromium for the dashboard's tests, its screenshots and its bench:
Debian's ``chromium`` package driven by the Playwright Python package (no
browser download: ``playwright install`` is never needed)."""

from __future__ import annotations

import os
import shutil

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    for candidate in (os.environ.get("KARMCHARI_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrowserMissing("no Chromium: apt-get install chromium "
                         "(or set KARMCHARI_CHROMIUM to its path)")


def launch(playwright):
    """A headless Chromium from the system, through Playwright."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=CHROMIUM_ARGS)
