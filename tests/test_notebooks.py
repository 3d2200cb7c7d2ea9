"Every notebook in notebooks/ runs top to bottom without an error."
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / 'notebooks').glob('*.ipynb'))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {'siamese_tutorial.ipynb', 'architectures.ipynb', 'pair_search.ipynb'}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    "A cell may take 900 s: training cells take ~1 min on 2 quiet cores, ten times that when they are shared"
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}},
                   allow_errors=False).execute()
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.output_type == 'error']
    assert not errors
    # A seeded training run does not give the same numbers on every machine and build (the same cells have given a
    # pair accuracy of 0.90 and 0.93), so the outcomes are held to margins below the spread measured over seeds and
    # runs (`python bench/training_spread.py`, bench/RESULTS.md): pair accuracy 0.90-0.95, top-1 retrieval
    # 0.81-0.88, same digit in matches 96.6-100%. Chance is 0.5, 0.1 and about 10%: a model that did not learn
    # fails each by far.
    if path.name == 'siamese_tutorial.ipynb': assert validation_accuracy(nb) > 0.8
    if path.name == 'pair_search.ipynb':
        assert validation_accuracy(nb) > 0.8
        assert printed(nb, r'top-1 retrieval accuracy (\d\.\d+)') > 0.7
        assert printed(nb, r'(\d+\.\d)% of them the same digit') > 80


def validation_accuracy(nb):
    "The pair accuracy printed by the notebook's `learn.validate()` cell: `(#2) [loss,accuracy]`"
    cell = next(c for c in nb.cells if c.cell_type == 'code' and c.source.startswith('learn.validate()'))
    text = next(o['data']['text/plain'] for o in cell.outputs if o.output_type == 'execute_result')
    return float(re.findall(r'[-+]?\d*\.\d+(?:e[-+]?\d+)?', text)[-1])


def printed(nb, pattern):
    "The number `pattern` captures in the notebook's printed output"
    text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
                   if o.output_type == 'stream')
    return float(re.search(pattern, text).group(1))
