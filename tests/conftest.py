"""Shared pytest fixtures: a headless Chromium (Debian's package, driven by Playwright; never a browser download), and
the docs site of nbs/, built once a test run for every xdist worker."""
import os
from pathlib import Path
from typing import NamedTuple
import pytest

ROOT = Path(__file__).resolve().parent.parent

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


@pytest.fixture(scope='session')
def docs_site_dir(tmp_path_factory)->Path:
    """The offline docs site of nbs/ (`build_docs`, no execution), or a built one named by $DIFFAUG_DOCS_SITE. Built once
    a test run: the xdist workers share one folder under a file lock, so the docs and browser tests do not each build it."""
    site = os.environ.get('DIFFAUG_DOCS_SITE')
    if site and (Path(site)/'index.html').exists(): return Path(site)
    from filelock import FileLock
    from diffaug_nb.docs import build_docs
    root = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): root = root.parent   # the run's folder, above each worker's own
    site, done = root/'docs-site', root/'docs-site.done'
    with FileLock(str(root/'docs-site.lock')):
        # strict: a notebook whose show_doc cells fail to process fails the tests (a plain build warns and renders past it)
        if not done.exists(): build_docs(site, execute=False, strict=True); done.touch()   # a failed build is redone
    return site


class CliDone(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_here(capsys, monkeypatch):
    """`diffaug-nb ARGS` through `cli.main` in this process, from the project folder. A new interpreter would spend
    8-15 s importing torch and diffusers first; tests/test_cli.py's quick commands run the installed console script."""
    from diffaug_nb.cli import main
    def run(*args, env=None):
        monkeypatch.chdir(ROOT)
        for k, v in (env or {}).items(): monkeypatch.setenv(k, v)
        capsys.readouterr()
        try: rc, msg = main(list(args)), ''
        except SystemExit as e:   # sys.exit('message'): the interpreter would print it and exit with 1
            rc, msg = (e.code, '') if e.code is None or isinstance(e.code, int) else (1, f'{e.code}\n')
        out = capsys.readouterr()
        return CliDone(rc, out.out, out.err + msg)
    return run
