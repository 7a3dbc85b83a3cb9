"Every name a notebook imports from diffaug_nb exists (the experiment notebooks run only under papermill, late in CI)."
import ast, importlib, importlib.util, json
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1]/'nbs'


def _imports(nb: Path):
    for c in json.loads(nb.read_text())['cells']:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        try: tree = ast.parse('\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines()))
        except SyntaxError: continue
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith('diffaug_nb') and n.level == 0:
                yield n.module, [a.name for a in n.names]


@pytest.mark.parametrize('nb', sorted(NBS.rglob('*.ipynb')), ids=lambda p: str(p.relative_to(NBS)))
def test_imported_names_exist(nb):
    missing = [f'{m}.{x}' for m, names in _imports(nb) for x in names
               if x != '*' and not hasattr(importlib.import_module(m), x) and not importlib.util.find_spec(f'{m}.{x}')]
    assert not missing, f"{nb.name} imports names that do not exist: {missing}"
