"""Shared pytest fixtures: a headless Chromium (Debian's package, driven by Playwright; never a browser download)."""
import os
from pathlib import Path
import pytest

CHROMIUM = Path(os.environ.get('DIFFAUG_CHROMIUM', '/usr/bin/chromium'))
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']


@pytest.fixture(scope='session')
def chromium()->Path:
    "The Chromium executable (`bash run.sh test` installs it, as root or through sudo); the test is skipped, saying why, without it."
    if not CHROMIUM.exists():
        pytest.skip(f'browser tests need {CHROMIUM} (Debian package `chromium`): `bash run.sh test` installs it '
                    '(as root or with passwordless sudo), or run `apt-get install chromium`')
    return CHROMIUM


@pytest.fixture(scope='session')
def browser(chromium):
    "A headless Playwright `Browser` on Debian's Chromium."
    sync_api = pytest.importorskip('playwright.sync_api', reason='the `playwright` Python package is not installed (pip install playwright)')
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
