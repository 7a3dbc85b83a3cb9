"""Shared pytest fixtures: a headless Chromium (Debian's package, driven by Playwright; never a browser download)."""
import os, shutil, subprocess
from pathlib import Path
import pytest

CHROMIUM = Path(os.environ.get('DIFFAUG_CHROMIUM', '/usr/bin/chromium'))
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']


def _install_chromium()->str:
    "Try `apt-get install chromium` (as root, or with passwordless sudo); return what happened."
    if not shutil.which('apt-get'): return 'apt-get is not available on this machine'
    sudo = [] if os.geteuid() == 0 else (['sudo', '-n'] if shutil.which('sudo') else None)
    if sudo is None: return 'not root and no sudo to run apt-get'
    env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
    try:
        for cmd in (['apt-get', 'update', '-qq'], ['apt-get', 'install', '-y', '-qq', 'chromium']):
            r = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode: return f"`{' '.join(sudo + cmd)}` failed: {(r.stderr or r.stdout)[-400:]}"
    except (subprocess.TimeoutExpired, OSError) as e: return f'apt-get failed: {e}'
    return 'installed' if CHROMIUM.exists() else f'apt-get ran but {CHROMIUM} is still missing'


@pytest.fixture(scope='session')
def chromium()->Path:
    "The Chromium executable; installed with apt-get when absent; the test is skipped (saying why) only if that fails."
    if not CHROMIUM.exists():
        why = _install_chromium()
        if not CHROMIUM.exists():
            pytest.skip(f'browser tests need {CHROMIUM} (Debian package `chromium`) and it could not be installed: {why}')
    return CHROMIUM


@pytest.fixture(scope='session')
def browser(chromium):
    "A headless Playwright `Browser` on Debian's Chromium."
    sync_api = pytest.importorskip('playwright.sync_api', reason='the `playwright` Python package is not installed (pip install playwright)')
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
