"""The offline docs site (diffaug_nb.docs): every notebook becomes a page, pages link to each other, nothing is fetched
from the network. The real notebooks are built once without execution (module fixture); a tiny notebook folder is
built with execution to check outputs, plotly figures and the nbdev directives."""
import os, re, json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
import pytest

from nbdev.config import get_config
from diffaug_nb.docs import build_docs, docs_notebooks, page_names, site_pages, offline_problems

NBS = get_config().nbs_path


class _Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.hrefs, self.srcs = [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'a' and a.get('href'): self.hrefs.append(a['href'])
        if tag == 'script' and a.get('src'): self.srcs.append(a['src'])


def _parse(page: Path) -> _Links:
    p = _Links(); p.feed(page.read_text(encoding='utf-8')); return p


def _local_targets(site: Path, page: Path, hrefs) -> set:
    "Site-relative paths of the local pages `hrefs` on `page` point to."
    base = 'http://site/' + page.relative_to(site).as_posix()
    res = set()
    for h in hrefs:
        u = urlparse(urljoin(base, h))
        if u.netloc == 'site': res.add(u.path.lstrip('/') or 'index.html')
    return res


@pytest.fixture(scope='module')
def site(docs_site_dir):
    return docs_site_dir   # conftest: built once a run, shared with the browser tests


def test_every_notebook_is_a_page(site):
    nbs = docs_notebooks(NBS)
    assert len(nbs) >= 4
    names = page_names(nbs)
    pages = {p.relative_to(site).as_posix() for p in site_pages(site)}
    for nb in nbs:
        assert names[nb].with_suffix('.html').as_posix() in pages, nb
    assert (site / 'index.html').exists() and site_pages(site)[0] == site / 'index.html'
    assert not any(p.name.startswith('_') for p in NBS.rglob('*.ipynb') if p.with_suffix('.html').name in pages)
    # a page shows its notebook: the H1 title and the API docs nbdev's show_doc renders
    diffusion = (site / 'diffusion.html').read_text(encoding='utf-8')
    assert 'Diffusion core' in diffusion and '>Denoiser<' in diffusion.replace('<code>', '').replace('</code>', '')
    assert '#| export' not in diffusion and 'default_exp' not in diffusion


def test_pages_link_to_each_other(site):
    pages = site_pages(site)
    all_pages = {p.relative_to(site).as_posix() for p in pages}
    for page in pages:
        targets = _local_targets(site, page, _parse(page).hrefs)
        missing = all_pages - targets - {page.relative_to(site).as_posix()}
        assert not missing, f'{page.name} has no link to {sorted(missing)[:5]}'
        for t in targets:   # and every local link resolves to a file
            if not t.endswith('/'): assert (site / t).exists(), f'{page.name} links to missing {t}'


def test_site_is_offline(site):
    assert offline_problems(site) == []
    for page in site_pages(site):
        for src in _parse(page).srcs:
            assert not re.match(r'^\s*(https?:)?//', src), (page.name, src)
            assert (page.parent / src.split('?')[0]).resolve().exists(), (page.name, src)
    # search runs in the browser from the local index
    idx = json.loads((site / 'search' / 'search_index.json').read_text())
    assert any('Denoiser' in d.get('text', '') + d.get('title', '') for d in idx['docs'])


def _tiny_nbs(d: Path):
    "A notebook folder without index.ipynb: one executed page with a plotly figure, maths and nbdev directives."
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell('# Tiny page\n> A page with a figure.\n\nThe forward step $x_t = \\sqrt{\\bar\\alpha_t} x_0$.'),
        nbformat.v4.new_code_cell('#| export\ndef double(x):\n    "Twice `x`: $2x$"\n    return 2 * x'),
        nbformat.v4.new_code_cell('import plotly.graph_objects as go'),
        nbformat.v4.new_code_cell('print("answer", double(21))'),
        nbformat.v4.new_code_cell('go.Figure(go.Bar(x=["a", "b"], y=[1, 3]))'),
        nbformat.v4.new_code_cell('#| hide\nprint("HIDDEN-CELL")'),
        nbformat.v4.new_code_cell('#| eval: false\nprint("NOT-EVALUATED")'),
    ])
    nbformat.write(nb, d / '01_tiny.ipynb')
    sub = d / 'experiments'; sub.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_raw_cell('---\nskip_exec: true\n---'),
                                                   nbformat.v4.new_markdown_cell('# An experiment\n> Run by papermill.'),
                                                   nbformat.v4.new_code_cell('raise RuntimeError("must not run")')]),
                   sub / 'run.ipynb')
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Scratch')]), d / '_scratch.ipynb')


def test_executed_outputs_and_figures_offline(tmp_path):
    nbs = tmp_path / 'nbs'; nbs.mkdir(); _tiny_nbs(nbs)
    site = build_docs(tmp_path / 'site', nbs_path=nbs, execute=True, cache=False, strict=True)
    pages = [p.relative_to(site).as_posix() for p in site_pages(site)]
    assert pages == ['index.html', 'tiny.html', 'experiments/run.html']
    html = (site / 'tiny.html').read_text(encoding='utf-8')
    assert 'answer 42' in html                                   # executed, output kept
    assert 'HIDDEN-CELL' not in html and 'NOT-EVALUATED' in html  # `#| hide` gone; eval:false shown, not run
    assert html.count('answer 42') == 1
    assert 'class="plotly-graph-div"' in html and 'Plotly.newPlot' in html
    assert '<script src="assets/plotly.min.js"></script>' in html and (site / 'assets/plotly.min.js').stat().st_size > 1e6
    try: import jupyter_server_mathjax  # noqa: F401  (the local MathJax; without it maths stays TeX, loading nothing)
    except ImportError: assert 'MathJax.js' not in html
    else: assert 'assets/mathjax/MathJax.js' in html and (site / 'assets/mathjax/MathJax.js').exists()
    assert '>double<' in html                                    # show_doc of the exported function
    assert 'must not run' in (site / 'experiments/run.html').read_text(encoding='utf-8')
    index = (site / 'index.html').read_text(encoding='utf-8')   # no index.ipynb: a generated home page
    assert 'href="tiny.html"' in index and 'A page with a figure.' in index
    assert offline_problems(site) == []


def test_failures_are_reported(tmp_path):
    """A notebook whose cell fails: a strict build raises with the error, a tolerant one warns with it and renders the page;
    the caller's working directory and environment stay as they were (the cells run in worker processes)."""
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Broken\n> A failing cell.'),
                                                   nbformat.v4.new_code_cell('raise ValueError("cell-failure-marker")')]),
                   nbs / '01_broken.ipynb')
    cwd, env = os.getcwd(), dict(os.environ)
    with pytest.raises(RuntimeError, match='cell-failure-marker'):
        build_docs(tmp_path / 'site', nbs_path=nbs, execute=True, cache=False, strict=True)
    with pytest.warns(UserWarning, match='(?s)01_broken.ipynb did not process cleanly.*cell-failure-marker'):
        site = build_docs(tmp_path / 'site', nbs_path=nbs, execute=True, cache=False)
    assert 'A failing cell.' in (site / 'broken.html').read_text(encoding='utf-8')
    assert os.getcwd() == cwd and dict(os.environ) == env


def test_quarto_config_for_nbdev_docs():
    "Where Quarto exists, `nbdev-docs` renders a website with a sidebar from nbs/_quarto.yml (nbdev's template)."
    import yaml
    q = yaml.safe_load((NBS / '_quarto.yml').read_text())
    assert q['project']['type'] == 'website'
    assert q['format']['html']['theme'] and q['format']['html']['css'] == 'styles.css' and (NBS / 'styles.css').exists()
    assert 'sidebar' in q['website'] and q['website']['navbar']['search'] is True
    assert q['metadata-files'] == ['nbdev.yml', 'sidebar.yml']   # both written by nbdev-docs before rendering


def _evaluated_cells_mixing_code(nb_path: Path) -> list:
    """Cells the docs build runs although the cells before them did not run: nbdev evaluates every non-export cell that
    holds an import (anywhere in it), so such a cell must hold only imports and definitions, or names defined by
    the skipped cells are missing (NameError: the page renders without its outputs)."""
    import ast
    nb = nbformat.read(nb_path, as_version=4)
    bad = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'code' or re.search(r'^#\|\s*(export|eval:\s*false)', c.source, re.M): continue
        try: tree = ast.parse('\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in c.source.splitlines()))
        except SyntaxError: continue
        if not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)): continue
        ok = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
        if not all(isinstance(n, ok) for n in tree.body): bad.append((i, c.source.splitlines()[0][:60]))
    return bad


def test_no_docs_cell_mixes_imports_with_code():
    bad = {str(p.relative_to(NBS)): b for p in sorted(NBS.glob('*.ipynb')) if (b := _evaluated_cells_mixing_code(p))}
    assert not bad, f"move these imports into the notebook's hide import cell: {bad}"
