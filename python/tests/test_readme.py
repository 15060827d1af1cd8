"""README's Python cell runs as written (matplotlib, no display: it saves its figure) and draws both grids."""

from __future__ import annotations

import re

from conftest import ROOT, missing


def notebook_cell(path: str = "README.md", heading: str = "## Python") -> str:
    text = (ROOT / path).read_text()
    section = text[text.index(heading):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, f"{path}'s Python section has no ```python cell"
    return m.group(1)


def test_the_books_python_chapter_shows_the_readmes_cell():
    # Run here from README only; the book's copy must not drift from it.
    assert notebook_cell("docs/src/python.md", "# Python") == notebook_cell()


def test_readme_notebook_cell_runs(model_path, tmp_path, monkeypatch):
    try:
        import matplotlib
    except ImportError:
        missing("matplotlib is not installed (pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(ROOT)  # the cell names the bundled model relative to the repository
    import matplotlib.figure

    shown = []  # the cell saves its figure (no display needed); recorded here, not written into the repository
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, *a, **k: shown.append(fig))
    scope: dict = {}
    exec(compile(notebook_cell(), "README.md (Python cell)", "exec"), scope)
    assert len(shown) == 1
    axes = [ax for ax in shown[0].axes if ax.get_title() in ("heads", "positions")]
    assert sorted(ax.get_title() for ax in axes) == ["heads", "positions"]
    r = scope["r"]
    for ax in axes:
        image = ax.get_images()[0].get_array()
        want = r.heads if ax.get_title() == "heads" else r.positions
        assert image.shape == want.shape
    plt.close("all")
