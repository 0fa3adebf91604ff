from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import badges  # noqa: E402


def test_every_badge_matches_the_repository_url() -> None:
    assert badges.disagreements(REPO) == []
    url = badges.repository_url(REPO)
    top = (REPO / "README.md").read_text().splitlines()[:3]
    assert badges.badge(url, "colab/setup.ipynb") in top[0] and badges.kaggle_badge(url, "colab/kaggle_setup.ipynb") in top[1]
    assert badges.badge(url, "colab/part2_quickstart_2e.ipynb") in top[2], "the second edition's quick start has its badge"
    quick = (REPO / "colab" / "part2_quickstart_2e.ipynb").read_text()
    assert badges.colab_url(url, "colab/part2_quickstart_2e.ipynb") in quick, "and the notebook opens itself"


def copy_of_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "colab").mkdir(parents=True)
    shutil.copy(REPO / "setup.cfg", root)
    shutil.copy(REPO / "README.md", root)
    for nb in (REPO / "colab").glob("*.ipynb"):
        shutil.copy(nb, root / "colab")
    return root


def test_a_stale_badge_is_caught_and_rewritten(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    nb = root / "colab" / "setup.ipynb"
    nb.write_text(nb.read_text().replace("github/dlwpt-provision/dlwpt-provision/blob", "github/someone/old-name/blob"))
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("blob/main/colab/setup.ipynb", "blob/master/colab/setup.ipynb"))
    assert sorted(badges.disagreements(root)) == ["README.md", "colab/setup.ipynb"]
    badges.disagreements(root, write=True)
    assert badges.disagreements(root) == []
    assert "someone/old-name" not in nb.read_text()


def test_moving_the_repository_changes_every_badge(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    cfg = root / "setup.cfg"
    cfg.write_text(cfg.read_text().replace("Repository = https://github.com/dlwpt-provision/dlwpt-provision", "Repository = https://github.com/newowner/newrepo"))
    assert len(badges.disagreements(root)) == 5
    badges.disagreements(root, write=True)
    assert "github/newowner/newrepo/blob/main/colab/part2_quickstart.ipynb" in (root / "colab" / "part2_quickstart.ipynb").read_text()
    quick = "github/newowner/newrepo/blob/main/colab/part2_quickstart_2e.ipynb"
    assert quick in (root / "colab" / "part2_quickstart_2e.ipynb").read_text() and quick in (root / "README.md").read_text()
    kaggle = "kaggle.com/kernels/welcome?src=https://github.com/newowner/newrepo/blob/main/colab/kaggle_setup.ipynb"
    assert kaggle in (root / "colab" / "kaggle_setup.ipynb").read_text() and kaggle in (root / "README.md").read_text()
    assert 'TOOL_SOURCE = \\"git+https://github.com/newowner/newrepo\\"' in (root / "colab" / "setup.ipynb").read_text()


def test_the_readmes_second_edition_badge_keeps_opening_the_second_editions_quick_start(tmp_path: Path) -> None:
    """The README has two Colab badges: each is rewritten to the notebook of its place, not both to the setup notebook."""
    root = copy_of_repo(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("blob/main/colab/part2_quickstart_2e.ipynb", "blob/main/colab/setup.ipynb"))
    assert badges.disagreements(root) == ["README.md"]
    badges.disagreements(root, write=True)
    text = readme.read_text()
    url = badges.repository_url(root)
    assert text.count(badges.badge(url, "colab/part2_quickstart_2e.ipynb")) == 1 and text.count(badges.badge(url, "colab/setup.ipynb")) == 1
    readme.write_text(text.replace(badges.badge(url, "colab/part2_quickstart_2e.ipynb"), ""))
    assert badges.disagreements(root) == ["README.md (a badge is missing)"]
