#!/usr/bin/env python3
"""Regenerate every "Open in Colab" and "Open in Kaggle" badge (README and notebooks) from the repository URL in setup.cfg.

    python scripts/badges.py           # rewrite badges and install URLs that disagree
    python scripts/badges.py --check   # exit 1 and list them instead (used by the tests)

The URL lives in one place: setup.cfg, [metadata] project_urls, "Repository".
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BRANCH = "main"
BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]\(([^)]*)\)")
KAGGLE_BADGE = re.compile(r"\[!\[Open In Kaggle\]\(https://kaggle\.com/static/images/open-in-kaggle\.svg\)\]\(([^)]*)\)")
KAGGLE_NOTEBOOK = "colab/kaggle_setup.ipynb"  # what the README's Kaggle badge opens
README_COLAB = ("colab/setup.ipynb", "colab/part2_quickstart_2e.ipynb")  # what the README's Colab badges open, in order
TOOL_SOURCE = re.compile(r'TOOL_SOURCE = "git\+([^"]*)"')


def repository_url(root: Path = REPO) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    for line in cfg["metadata"]["project_urls"].strip().splitlines():
        name, _, url = line.partition("=")
        if name.strip() == "Repository":
            return url.strip().rstrip("/")
    raise SystemExit("setup.cfg has no 'Repository' in [metadata] project_urls")


def colab_url(repo_url: str, notebook: str) -> str:
    owner_repo = repo_url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/{notebook}"


def badge(repo_url: str, notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(repo_url, notebook)})"


def kaggle_url(repo_url: str, notebook: str) -> str:
    """Kaggle opens a notebook from its GitHub address."""
    return f"https://kaggle.com/kernels/welcome?src={repo_url}/blob/{BRANCH}/{notebook}"


def kaggle_badge(repo_url: str, notebook: str) -> str:
    return f"[![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]({kaggle_url(repo_url, notebook)})"


def fix_text(text: str, repo_url: str, notebooks: tuple[str, ...], kaggle_notebook: str | None = None) -> str:
    """``text`` with its n-th Colab badge opening ``notebooks[n]`` (the last one for any after it), its Kaggle badges
    ``kaggle_notebook``, and its install URLs the repository's."""
    count = iter(range(len(BADGE.findall(text))))
    text = BADGE.sub(lambda m: badge(repo_url, notebooks[min(next(count), len(notebooks) - 1)]), text)
    text = KAGGLE_BADGE.sub(lambda m: kaggle_badge(repo_url, kaggle_notebook or notebooks[0]), text)
    return TOOL_SOURCE.sub(f'TOOL_SOURCE = "git+{repo_url}"', text)


def targets(root: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """(file, notebooks its Colab badges open): the README's open the setup notebook and the second edition's quick
    start, each notebook's itself."""
    found = [(root / "README.md", README_COLAB)]
    found += [(nb, (f"colab/{nb.name}",)) for nb in sorted((root / "colab").glob("*.ipynb"))]
    return found


def disagreements(root: Path = REPO, write: bool = False) -> list[str]:
    repo_url = repository_url(root)
    wrong = []
    for path, notebooks in targets(root):
        if path.suffix == ".ipynb":
            nb = json.loads(path.read_text())
            changed = False
            for cell in nb["cells"]:
                source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                fixed = fix_text(source, repo_url, notebooks, notebooks[0])
                if fixed != source:
                    cell["source"] = fixed
                    changed = True
            if changed:
                wrong.append(str(path.relative_to(root)))
                if write:
                    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        else:
            text = path.read_text()
            if len(BADGE.findall(text)) < len(notebooks) or not KAGGLE_BADGE.search(text):
                wrong.append(f"{path.relative_to(root)} (a badge is missing)")
                continue
            fixed = fix_text(text, repo_url, notebooks, KAGGLE_NOTEBOOK)
            if fixed != text:
                wrong.append(str(path.relative_to(root)))
                if write:
                    path.write_text(fixed)
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when a badge disagrees")
    args = parser.parse_args(argv)
    wrong = disagreements(write=not args.check)
    for item in wrong:
        print(f"{'disagrees' if args.check else 'rewritten'}: {item}")
    return 1 if (args.check and wrong) else 0


if __name__ == "__main__":
    sys.exit(main())
