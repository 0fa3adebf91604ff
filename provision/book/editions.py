"""The book's two editions: which repository, commit, fixes and requirements each one means, and which one a
checkout on disk is.

``book.edition`` (``--edition``) picks one: ``1`` (dlwpt-code, 2020) or ``2`` (dlwpt-code-2e, 2026), or ``auto``,
the edition of the checkout already in the book's folder, else the first. Whatever the profile leaves unset of
``book.repo``, ``book.ref`` and ``book.fixes`` then comes from the edition, and a requirements file of one edition
named in ``requirements.files`` is swapped for the other's. A checkout is recognised by its commit (the pinned
one) and else by files only that edition has, so a reader's own clone or a trimmed copy is recognised too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_EDITION = 1  # what the tool has always prepared; a checkout of the second edition on disk is followed (auto)


@dataclass(frozen=True)
class Edition:
    number: int
    name: str                     # the repository's name, also its fixes file's: configs/book/<name>.yaml
    title: str
    repo: str
    commit: str                   # the edition's last commit (the pin)
    requirements: str             # configs/requirements/<this>: what its LUNA chapters need today
    only_here: tuple[str, ...]    # files that only this edition's checkout has
    extras: tuple[str, ...] = ()  # requirement files of chapters beyond the LUNA classification ones (book.extras)
    assets: str = ""              # configs/datasets/<this>: what those chapters load besides the data (book.extras, book.sam)

    @property
    def fixes(self) -> str:
        return f"book/{self.name}.yaml"

    @property
    def label(self) -> str:
        return f"the {self.title} ({self.name})"

    @property
    def pin(self) -> str:
        return f"{self.repo} at {self.commit[:7]}"


EDITIONS: dict[int, Edition] = {
    1: Edition(1, "dlwpt-code", "first edition, 2020", "https://github.com/deep-learning-with-pytorch/dlwpt-code",
               "d6c0210143daa133bbdeddaffc8993b1e17b5174", "dlwpt.txt", ("p2ch10/dsets.py", "p2ch11/training.py")),
    # The short commit is all that is published of d220a25 here; a server that does not serve it by name is asked for its
    # branches, and the commit is found among them (checkout.clone).
    2: Edition(2, "dlwpt-code-2e", "second edition, 2026",
               "https://github.com/deep-learning-with-pytorch/dlwpt-code-2e", "d220a25", "dlwpt-2e.txt",
               ("p2ch15/utils.py", "p2ch15/dsets.py"), extras=("dlwpt-2e-ch15.txt",), assets="segment-anything"),
}
NAMES = {**{str(n): n for n in EDITIONS}, **{e.name: n for n, e in EDITIONS.items()}, "1e": 1, "2e": 2, "first": 1, "second": 2}


def parse_edition(value: Any, path: str) -> int | None:
    """``1``, ``2``, ``dlwpt-code``, ``dlwpt-code-2e``, ``2e`` -> the edition's number; ``auto`` -> None."""
    if value in (None, "auto"):
        return None
    number = NAMES.get(str(value).strip().lower()) if not isinstance(value, bool) else None
    if number is None:
        raise ValueError(f"{value!r} is not an edition of the book: 1 (dlwpt-code), 2 (dlwpt-code-2e) or auto")
    return number


# Segment Anything's checkpoints by the names chapter 15's utils.get_sam_model takes (size="large") and by the model's own
SAM_MODELS = {"vit_b": "vit_b", "base": "vit_b", "vit_l": "vit_l", "large": "vit_l", "vit_h": "vit_h", "huge": "vit_h"}


def parse_sam(value: Any, path: str) -> tuple[str, ...]:
    """``[vit_l]``, ``"base,large"``, ``huge`` -> ("vit_l",), ("vit_b", "vit_l"), ("vit_h",); ``[]`` or ``""``: none."""
    items = value if isinstance(value, (list, tuple)) else [] if value in (None, "") else str(value).split(",")
    models = []
    for item in items:
        model = SAM_MODELS.get(str(item).strip().lower()) if isinstance(item, str) else None
        if model is None:
            raise ValueError(f"{item!r} is not a Segment Anything checkpoint: vit_b (base), vit_l (large, the book's) or vit_h (huge)")
        models.append(model)
    return tuple(dict.fromkeys(models))


def recognise(checkout: Path, head: str | None = None) -> int | None:
    """The edition of the checkout in ``checkout`` (its pinned commit, else files only one edition has); None when
    there is none, or it is neither."""
    if head:
        for number, edition in EDITIONS.items():
            if head.startswith(edition.commit) or edition.commit.startswith(head):
                return number
    found = [n for n, e in EDITIONS.items() if any((checkout / f).is_file() for f in e.only_here)]
    return found[0] if len(found) == 1 else None


def choose(asked: int | None, on_disk: int | None) -> tuple[Edition, str]:
    """The edition to prepare and why: the profile's, else the checkout's, else the default."""
    if asked is not None:
        return EDITIONS[asked], "book.edition"
    if on_disk is not None:
        return EDITIONS[on_disk], "the checkout on disk"
    return EDITIONS[DEFAULT_EDITION], "the default"


def other(edition: Edition) -> Edition:
    return EDITIONS[2 if edition.number == 1 else 1]


def swap_requirements(files: tuple[str, ...], edition: Edition, extras: bool) -> tuple[str, ...]:
    """``files`` with either edition's requirements file replaced by ``edition``'s (in the same folder), followed by
    its extras (chapter 15's) when asked for."""
    mains = {e.requirements for e in EDITIONS.values()}
    out: list[str] = []
    for file in files:
        path = Path(file)
        if path.name not in mains:
            out.append(file)
            continue
        out.append(str(path.with_name(edition.requirements)))
        out += [str(path.with_name(x)) for x in edition.extras] if extras else []
    return tuple(dict.fromkeys(out))


def of(book: Any) -> Edition:
    """The edition a resolved ``book`` section prepares."""
    return EDITIONS[book.edition or DEFAULT_EDITION]


def resolve(book: Any, files: tuple[str, ...], on_disk: int | None) -> tuple[Any, tuple[str, ...]]:
    """The book settings with the edition chosen and what the profile left unset filled from it; the requirement
    files to match."""
    edition, why = choose(book.edition, on_disk)
    book = dataclasses.replace(book, edition=edition.number, edition_from=why, repo=book.repo or edition.repo,
                               ref=book.ref or edition.commit, fixes=book.fixes or edition.fixes, found_edition=on_disk)
    return book, swap_requirements(files, edition, book.extras)
