"""In a real browser: the explorer notebook run in JupyterLab (move the slider, the picture changes), and every page of
the offline docs site (no 404, no console error, no empty plotly figure). Headless Debian Chromium via Playwright.

Needs the system package `chromium` (Debian/Ubuntu: `apt-get install chromium`; the `chromium` fixture installs it
when it can) and the venv's `playwright`, `jupyterlab`, `ipywidgets`, `anywidget` Python packages."""
import os, sys, re, json, shutil, socket, secrets, subprocess, threading, time, urllib.request, urllib.error
from contextlib import contextmanager
from functools import partial
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import urljoin, urlparse
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO/'nbs'/'explorer.ipynb'


def free_port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def screenshot_dir()->Path:
    "Where screenshots are copied for people to look at: settings' runs_dir/screenshots (outside nbs/)."
    try:
        from diffaug_nb.config import settings
        d = Path(settings()['runs_dir'])/'screenshots'
    except Exception: d = REPO/'runs'/'screenshots'
    d.mkdir(parents=True, exist_ok=True)
    return d


def keep_screenshot(page, tmp_path:Path, name:str)->Path:
    shot = tmp_path/name
    page.screenshot(path=str(shot), full_page=True)
    dst = screenshot_dir()/name
    shutil.copy(shot, dst)
    print(f'screenshot: {dst}')
    return dst


# ---------------------------------------------------------------------------------------------------------------
# JupyterLab

def _wait_http(url:str, proc, timeout:float, log:Path):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f'JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}')
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except (urllib.error.URLError, ConnectionError, TimeoutError): pass
        time.sleep(0.3)
    raise TimeoutError(f'JupyterLab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}')


@pytest.fixture(scope='module')
def jupyterlab(tmp_path_factory, chromium):
    "JupyterLab on 127.0.0.1 (free port, known token, its own config/data/runtime dirs) serving a copy of the explorer notebook."
    if not NOTEBOOK.exists(): pytest.fail(f'{NOTEBOOK} is missing')
    root = tmp_path_factory.mktemp('jupyterlab')
    work = root/'work'; work.mkdir()
    shutil.copy(NOTEBOOK, work/NOTEBOOK.name)  # the browser autosaves: never let it touch nbs/
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(root/'config'), 'JUPYTER_DATA_DIR': str(root/'data'),
           'JUPYTER_RUNTIME_DIR': str(root/'runtime'), 'IPYTHONDIR': str(root/'ipython'),
           'DIFFAUG_SETTINGS': str(REPO/'settings.ini'), 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}',
           '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=', '--ServerApp.open_browser=False',
           '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate', '--LabApp.extension_manager=readonly']
    if os.geteuid() == 0: cmd.append('--allow-root')
    news = root/'config'/'lab'/'user-settings'/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True); news.write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    log = root/'jupyterlab.log'
    with open(log, 'w') as f: proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=work)
    try:
        base = f'http://127.0.0.1:{port}'
        _wait_http(f'{base}/api/status?token={token}', proc, 90, log)
        yield dict(base=base, token=token, work=work, log=log)
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)


_NOTEBOOK_JS = "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; return w && w.content && w.sessionContext ? w : null }"

_ERRORS_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget, cells = w.content.model.cells, res = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j).toJSON();
      if (o.output_type === 'error') res.push(o.ename + ': ' + o.evalue);
    }
  }
  return res;
}"""

_HEATMAP_JS = """() => { const im = document.querySelector('.jp-OutputArea .js-plotly-plot .heatmaplayer image');
                        return im ? im.getAttribute('href') || im.getAttribute('xlink:href') : null }"""


_STATUS_JS = "() => { const e = document.querySelector('.jp-OutputArea .widget-html-content'); return e ? e.textContent : null }"


def test_explorer_in_jupyterlab(jupyterlab, browser, tmp_path):
    "Open the explorer notebook, run it, move the t slider: the x_t picture and the status line change."
    ctx = browser.new_context(viewport=dict(width=1500, height=2000))
    page = ctx.new_page()
    page_errors, step = [], ['open JupyterLab']
    page.on('pageerror', lambda e: page_errors.append(str(e)))
    def wait(js, arg=None, timeout=90_000): page.wait_for_function(js, arg=arg, timeout=timeout)
    try:
        page.goto(f"{jupyterlab['base']}/lab/tree/{NOTEBOOK.name}?reset&token={jupyterlab['token']}", timeout=90_000)
        wait(_NOTEBOOK_JS)
        step[0] = 'start the kernel'
        kernel = page.evaluate("""async () => { const w = window.jupyterapp.shell.currentWidget;
            await w.context.ready; await w.sessionContext.ready;
            const k = w.sessionContext.session && w.sessionContext.session.kernel; return k ? k.name : null }""")
        assert kernel, 'no kernel started for the notebook'
        step[0] = 'run all cells until the explorer has rendered'
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells') }")
        wait(f"() => {{ const s = ({_STATUS_JS})(); return (s && /rendered in|error/.test(s)) || ({_ERRORS_JS})().length > 0 }}", timeout=180_000)
        assert not page.evaluate(_ERRORS_JS), 'a cell raised'
        wait(_HEATMAP_JS)
        status_before, before = page.evaluate(_STATUS_JS), page.evaluate(_HEATMAP_JS)
        assert 'error' not in status_before, status_before
        fig = page.locator('.jp-OutputArea .js-plotly-plot').first
        fig.scroll_into_view_if_needed(); page.wait_for_timeout(300)
        shot_before = fig.screenshot()
        keep_screenshot(page, tmp_path, 'explorer-before.png')
        step[0] = 'move the t slider to 600 (type into its readout)'
        readout = page.locator('.jp-OutputArea .widget-slider .widget-readout').first   # ipywidgets 8: editable
        readout.fill('600'); readout.press('Enter')      # keys go to the readout only, never to the notebook
        wait(f"(b) => {{ const h = ({_HEATMAP_JS})(); return h && h !== b }}", arg=before)
        wait(f"(s) => {{ const t = ({_STATUS_JS})(); return t && t !== s && /t=600/.test(t) && /rendered in|error/.test(t) }}", arg=status_before)
        status_after = page.evaluate(_STATUS_JS)
        assert 'error' not in status_after, status_after
        page.wait_for_timeout(500)   # let plotly finish painting
        assert fig.screenshot() != shot_before, 'the figure looks the same after moving the slider'
        keep_screenshot(page, tmp_path, 'explorer.png')
        step[0] = 'open the Gradients tab'     # the DE tab is open from the start; this one is built on opening
        n_plots = page.locator('.jp-OutputArea .js-plotly-plot').count()
        page.get_by_role('tab', name='Gradients').click()
        wait(f"() => document.querySelectorAll('.jp-OutputArea .js-plotly-plot').length > {n_plots}")
        box = page.locator('.jp-OutputArea-output .widget-vbox').first
        box.scroll_into_view_if_needed(); page.wait_for_timeout(500)
        shot = tmp_path/'explorer-widget.png'; box.screenshot(path=str(shot)); shutil.copy(shot, screenshot_dir()/shot.name)
        print(f'screenshot: {screenshot_dir()/shot.name}')
        t_before = int(re.search(r't=(\d+)', status_before).group(1))
        ms = float(re.search(r'rendered in (\d+) ms', status_after).group(1))
        print(f'explorer: t {t_before} -> 600, kernel render {ms:.0f} ms')
        assert not page.evaluate(_ERRORS_JS)
        assert not page_errors, page_errors
    except Exception as e:
        try: keep_screenshot(page, tmp_path, 'explorer-failed.png'); errs = page.evaluate(_ERRORS_JS); st = page.evaluate(_STATUS_JS)
        except Exception: errs = st = '?'
        raise AssertionError(f'explorer in JupyterLab failed at step {step[0]!r}: {type(e).__name__}: {str(e)[:500]}\n'
                             f'cell errors: {errs}; status line: {st}; page errors: {page_errors[:5]}\n'
                             f'JupyterLab log (tail):\n{jupyterlab["log"].read_text()[-1500:]}') from e
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------------------------
# The docs site

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address):   # a page closed mid-download is not a site problem
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)): super().handle_error(request, client_address)


@contextmanager
def serve(site:Path):
    "`site` on 127.0.0.1 (a free port), served from a thread; yields the base URL."
    srv = _Server(('127.0.0.1', free_port()), partial(_QuietHandler, directory=str(site)))
    th = threading.Thread(target=srv.serve_forever, daemon=True); th.start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}/'
    finally: srv.shutdown(); srv.server_close()


@pytest.fixture(scope='module')
def docs_site(docs_site_dir, chromium):
    "The offline docs site (conftest's `docs_site_dir`: built once a run, or named by $DIFFAUG_DOCS_SITE) on 127.0.0.1, served from a thread."
    from diffaug_nb.docs import site_pages
    with serve(docs_site_dir) as base: yield dict(site=docs_site_dir, base=base, pages=site_pages(docs_site_dir))


_PLOTLY_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot, .plotly-graph-div')).map((el, i) => {
  const d = el.data || [];
  const n = d.map(t => ['x', 'y', 'z', 'values', 'r', 'lat', 'a'].map(k => t[k] ? (t[k].length || (t[k].bdata ? 1 : 0)) : 0)
                         .reduce((a, b) => a + b, 0)).reduce((a, b) => a + b, 0);
  return {i: i, id: el.id, traces: d.length, points: n, drawn: !!el.querySelector('.main-svg')};
})"""


def test_docs_pages_in_browser(docs_site, browser, tmp_path):
    "Every page: served (no 404 for it or anything it loads), no console error, every plotly figure drawn and non-empty."
    base, site = docs_site['base'], docs_site['site']
    pages = docs_site['pages']
    assert pages, f'the docs site {site} has no pages'
    ctx = browser.new_context(viewport=dict(width=1280, height=900))
    offline = []
    def only_local(route):
        if urlparse(route.request.url).hostname in ('127.0.0.1', 'localhost') or route.request.url.startswith('data:'): route.continue_()
        else: offline.append(route.request.url); route.abort()
    ctx.route('**/*', only_local)
    problems, links, n_figs, t0 = [], set(), 0, time.time()
    for p in pages:
        rel = p.relative_to(site).as_posix()
        url = urljoin(base, rel)
        page = ctx.new_page()
        errs = []
        page.on('console', lambda m, errs=errs: errs.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
        page.on('pageerror', lambda e, errs=errs: errs.append(f'page error: {e}'))
        page.on('response', lambda r, errs=errs: errs.append(f'HTTP {r.status}: {r.url}') if r.status >= 400 else None)
        resp = page.goto(url, wait_until='load', timeout=60_000)
        if resp is None or resp.status != 200: problems.append(f'{rel}: HTTP {resp.status if resp else "no response"}')
        try: page.wait_for_function("() => Array.from(document.querySelectorAll('.js-plotly-plot, .plotly-graph-div')).every(e => e.querySelector('.main-svg'))",
                                    timeout=20_000)
        except Exception: pass
        for f in page.evaluate(_PLOTLY_JS):
            n_figs += 1
            if not f['drawn']: problems.append(f"{rel}: plotly figure #{f['i']} ({f['id']}) was not drawn")
            elif f['traces'] == 0 or f['points'] == 0: problems.append(f"{rel}: plotly figure #{f['i']} ({f['id']}) is empty ({f['traces']} traces, {f['points']} points)")
        problems += [f'{rel}: {e}' for e in errs]
        for h in page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
            u = urlparse(h)
            if u.hostname == '127.0.0.1' and u.path: links.add(u._replace(fragment='', query='').geturl())
        if rel == 'index.html' or 'explorer' in rel: keep_screenshot(page, tmp_path, f"docs-{rel.replace('/', '_')}.png")
        page.close()
    for l in sorted(links):   # every internal link resolves (a broken nav entry is a 404 too)
        try: urllib.request.urlopen(l, timeout=10).close()
        except urllib.error.HTTPError as e: problems.append(f'link {l}: HTTP {e.code}')
    ctx.close()
    problems += [f'needs the network: {u}' for u in sorted(set(offline))]
    print(f'docs: {len(pages)} pages, {n_figs} plotly figures, {len(links)} internal links checked in {time.time() - t0:.0f} s')
    assert not problems, f'{len(problems)} problem(s) on the docs site:\n' + '\n'.join(problems[:60])


# ---------------------------------------------------------------------------------------------------------------
# Wide plotly figures on a docs page

_FIGURES_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(el => {
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width}; };
  const out = el.closest('.jp-OutputArea-output');
  return {article: box(document.querySelector('article')), div: box(el), svg: box(el.querySelector('.main-svg')),
          scrolls: out.scrollWidth > out.clientWidth + 1};
})"""


@pytest.fixture(scope='module')
def figures_site(tmp_path_factory, chromium):
    "A one-page docs site with stored plotly outputs (no execution): a figure wider than any page (1400 px) and a narrow one (300 px)."
    import nbformat, plotly.graph_objects as go
    from diffaug_nb.docs import build_docs
    from diffaug_nb.docs_nbs import PLOTLY_MIME
    d = tmp_path_factory.mktemp('figures'); (d/'nbs').mkdir()
    def fig_cell(width):
        fig = go.Figure(go.Bar(x=[f'bar {i}' for i in range(12)], y=list(range(1, 13)))).update_layout(width=width, height=300)
        out = nbformat.v4.new_output('display_data', {PLOTLY_MIME: json.loads(fig.to_json()), 'text/plain': 'Figure'})
        return nbformat.v4.new_code_cell(f'figure({width})', outputs=[out])
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Figures\n> A wide and a narrow figure.'),
                                                   fig_cell(1400), fig_cell(300)]), d/'nbs'/'01_figures.ipynb')
    site = build_docs(d/'site', nbs_path=d/'nbs', cache=False, strict=True)
    with serve(site) as base: yield base


def test_wide_figures_fit_the_page(figures_site, browser, tmp_path):
    "A plotly figure wider than the content column is drawn at the column's width (nothing cut off at its right edge); a narrow one keeps its width."
    for vw in (1280, 800):   # beside the two sidebars; and a narrower window, where only the content column is left
        ctx = browser.new_context(viewport=dict(width=vw, height=900))
        page = ctx.new_page()
        try:
            page.goto(figures_site + 'figures.html', wait_until='load', timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('.plotly-graph-div .main-svg').length >= 2", timeout=20_000)
            wide, narrow = page.evaluate(_FIGURES_JS)
            art = wide['article']
            assert art['left'] - 1 <= wide['svg']['left'] and wide['svg']['right'] <= art['right'] + 1, (vw, wide)
            assert abs(wide['svg']['width'] - wide['div']['width']) <= 1 and wide['svg']['width'] > 0.8 * art['width'], (vw, wide)
            assert not wide['scrolls'], (vw, wide)          # drawn to fit: no part of it is out of view
            assert abs(narrow['svg']['width'] - 300) <= 1, (vw, narrow)
            if vw == 1280: keep_screenshot(page, tmp_path, 'docs-wide-figure.png')
        finally: ctx.close()
