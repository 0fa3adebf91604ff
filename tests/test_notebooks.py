"""The Colab notebooks, executed by a real Jupyter kernel against a loopback mirror.

The badge notebooks run as a reader runs them: in a fresh runtime (a new venv with only a kernel in it) that
installs the tool itself from ``git+file://`` of this working tree, as the notebook's ``pip install git+https://...``
does. The one part that cannot run here is Colab itself: a STAND-IN ``google.colab`` package
(tests/support/colab_standin) on the kernel's path makes the tool detect Colab.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, Scans
from tests.support.book_data import candidates_csv
from tests.support.dataset import Built, tree_md5s
from tests.support.package import fresh_venv, offline_pip_env, tool_wheels, working_tree_repo
from tests.test_install import make_wheel

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

STANDIN = REPO / "tests" / "support" / "colab_standin"


def execute(name: str, params: dict, tmp_path: Path, kernel: str = "python3") -> list[str]:
    """Run a notebook with parameters injected after its `parameters` cell; return each cell's text output."""
    nb = nbformat.read(REPO / "colab" / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    texts = []
    for cell in nb.cells:
        text = ""
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text += out.get("text", "")
            elif out.get("output_type") == "error":
                text += "ERROR " + out.get("ename", "") + ": " + out.get("evalue", "")
        texts.append(text)
    return texts


def small_data_sets(manifest: Path, *more: str) -> list[str]:
    """The notebooks' EXTRA_SETS for a small test data set: its manifest, no room kept for the book's cache, no margin."""
    return [f"data.dataset={manifest}", "data.cache_gb_per_subset=0", "data.margin_gb=0", *more]


@pytest.fixture
def colab_kernel_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    log = tmp_path / "colab-standin.log"
    monkeypatch.setenv("PYTHONPATH", f"{STANDIN}:{REPO}")
    monkeypatch.setenv("COLAB_STANDIN_LOG", str(log))
    monkeypatch.delenv("CI", raising=False)
    return log


@dataclass(frozen=True)
class Runtime:
    python: Path       # the runtime's interpreter, which runs the notebook's kernel
    kernel: str        # its kernel's name
    tool_source: str   # what the notebook's TOOL_SOURCE installs: git+file:// of this working tree
    colab_log: Path    # what the google.colab stand-in was asked to do


@pytest.fixture(scope="session")
def tool_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"git+file://{working_tree_repo(tmp_path_factory.mktemp('tool') / 'dlwpt-provision')}"


@pytest.fixture
def fresh_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool_repo: str) -> Runtime:
    """A new venv holding only a kernel, as a fresh Colab runtime holds no dlwpt-provision: the notebook installs it."""
    wheels = tool_wheels()
    python = fresh_venv(tmp_path / "runtime", wheels, "ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / "fresh-runtime"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "a fresh runtime", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name, value in offline_pip_env(wheels).items():  # the notebook's own pip install, from the wheel folder
        monkeypatch.setenv(name, value)
    log = tmp_path / "colab-standin.log"
    monkeypatch.setenv("PYTHONPATH", str(STANDIN))  # google.colab only: the tool is what TOOL_SOURCE installs
    monkeypatch.setenv("COLAB_STANDIN_LOG", str(log))
    monkeypatch.delenv("CI", raising=False)
    return Runtime(python, "fresh-runtime", tool_repo, log)


def installed_in(runtime: Runtime) -> Path:
    """Where the runtime's interpreter imports the tool from (its own site-packages, not this checkout)."""
    where = subprocess.run([str(runtime.python), "-c", "import provision; print(provision.__file__)"], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"}, cwd=runtime.python.parent)
    assert where.returncode == 0, where.stderr
    path = Path(where.stdout.strip())
    assert path.is_relative_to(runtime.python.parent.parent) and "site-packages" in path.parts, path
    return path


@pytest.mark.slow
def test_setup_notebook_end_to_end(built: Built, serve, tmp_path: Path, fresh_runtime: Runtime) -> None:
    srv = serve()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "dlwptstandinpkg", "1.0")
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("dlwptstandinpkg==1.0\n")
    root = tmp_path / "content" / "dlwpt-code" / "data-unversioned"
    outputs = execute("setup.ipynb", {
        "SUBSETS": "0-1", "DATA_ROOT": str(root), "SOURCES": [srv.url + "/mirror/"], "CUDA_REQUIRED": False,
        "TOOL_SOURCE": fresh_runtime.tool_source, "BOOK": False, "SMOKE": False,
        "EXTRA_SETS": small_data_sets(built.manifest, f"requirements.files=[{reqs}]", f"requirements.find_links=[{wheels}]",
                                      "requirements.no_index=true", "requirements.installer=pip"),
    }, tmp_path, fresh_runtime.kernel)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    installed_in(fresh_runtime)
    assert "environment  colab" in text and "profile      colab" in text
    assert "add  dlwptstandinpkg==1.0" in text
    installed = subprocess.run([str(fresh_runtime.python), "-c", "import dlwptstandinpkg; print(dlwptstandinpkg.VERSION)"],
                               capture_output=True, text=True)
    assert installed.stdout.strip() == "1.0", "installed into the runtime's interpreter"
    summary = outputs[-1]
    assert "installed:  dlwptstandinpkg==1.0" in summary
    assert "staged:     subset0.zip, subset1.zip, annotations.csv" in summary
    assert "GPU:        none (CPU only)" in summary and "free disk:" in summary
    assert "book code:" not in summary and not (root.parent / ".git").exists(), "BOOK = False: no clone"
    expected = {rel: md5 for key in ("subset0.zip", "subset1.zip") for rel, md5 in built.files[key]["members"].items()}
    tree = tree_md5s(root / "part2" / "luna")
    assert {k: v for k, v in tree.items() if k != "annotations.csv"} == expected
    assert (root / "part2" / "luna" / "annotations.csv").read_bytes() == (built.folder / "annotations.csv").read_bytes()
    assert not fresh_runtime.colab_log.exists(), "no bucket: no sign-in"


def test_setup_notebook_keeps_colabs_torch(built: Built, serve, tmp_path: Path, colab_kernel_env: Path) -> None:
    """Colab's own torch satisfies the book's requirement and is not reinstalled (the tool from this checkout)."""
    pytest.importorskip("torch")
    srv = serve()
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("torch>=2.0\n")
    outputs = execute("setup.ipynb", {
        "SUBSETS": "0", "DATA_ROOT": str(tmp_path / "content" / "dlwpt-code" / "data-unversioned"), "SOURCES": [srv.url + "/mirror/"],
        "CUDA_REQUIRED": False, "TOOL_SOURCE": "", "BOOK": False, "SMOKE": False,
        "EXTRA_SETS": small_data_sets(built.manifest, f"requirements.files=[{reqs}]", "requirements.no_index=true", "requirements.installer=pip"),
    }, tmp_path)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    assert any(line.strip().startswith("ok") and "torch>=2.0" in line for line in text.splitlines()), "torch is kept, not reinstalled"
    assert "installed:  nothing was missing" in outputs[-1]


def checked_out_with_candidates(book: Path, spec: dict, scans: Scans, fixes_name: str, keep: tuple[str, ...], tmp_path: Path,
                                undo: bool = False) -> Path:
    """The book's code checked out in ``book`` first (``undo``: its fixes taken back, for the notebook to apply) with a
    candidates.csv for the synthetic scans (the bundles lack the book's 37 MB one); returns a fixes file whose smoke list
    keeps only the entry points ``keep``."""
    from provision.cli import main

    pre = tmp_path / "pre.yaml"
    pre.write_text(yaml.safe_dump({"extends": str(REPO / "configs" / "local.yaml"), "requirements": {"files": []},
                                   "data": {"root": str(book / "data-unversioned")}, "book": spec}))
    assert main(["book", "-c", str(pre)]) == 0
    if undo:
        assert main(["book", "--undo", "-c", str(pre)]) == 0, "the notebook applies the fixes itself"
    candidates_csv(book / "data" / "part2" / "luna" / "candidates.csv", scans.subsets[0], scans.absent)
    quick = yaml.safe_load((REPO / "configs" / "book" / fixes_name).read_text())
    quick["smoke"] = [e for e in quick["smoke"] if e["name"] in keep]
    fixes = tmp_path / f"quick-{fixes_name}"
    fixes.write_text(yaml.safe_dump(quick))
    return fixes


@pytest.mark.slow
def test_quickstart_notebook_installs_stages_gets_the_book_smokes_and_trains(scans: Scans, book_bundle, book_python: str, tmp_path: Path,
                                                                             fresh_runtime: Runtime, capsys) -> None:
    """Opened from its own badge in its own runtime: it installs the tool and the book's requirements itself."""

    bundle, commit = book_bundle
    book = tmp_path / "content" / "dlwpt-code"
    fixes = checked_out_with_candidates(book, {"repo": str(bundle), "ref": commit}, scans, "dlwpt-code.yaml",
                                        ("p2ch10 dataset", "p2ch11 training"), tmp_path)
    capsys.readouterr()
    outputs = execute("part2_quickstart.ipynb", {
        "SUBSETS": "0", "BOOK_DIR": str(book), "BOOK_REPO": str(bundle), "BOOK_REF": commit, "SOURCES": [str(scans.folder)],
        "TOOL_SOURCE": fresh_runtime.tool_source, "PYTHON": book_python, "WORKERS": 1,
        "EXTRA_SETS": small_data_sets(scans.manifest, f"book.fixes={fixes}", f"requirements.venv={Path(book_python).parent.parent}",
                                      f"requirements.files=[{REPO / 'configs' / 'requirements' / 'dlwpt.txt'}]",
                                      f"requirements.find_links=[{os.environ.get('PROVISION_TEST_WHEELS', '')}]", "requirements.no_index=true"),
    }, tmp_path, fresh_runtime.kernel)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    installed_in(fresh_runtime)
    assert "install    ok" in text, "the install step ran in this notebook (the book's requirements: all there already)"
    assert "p2ch11 training" in text and "all entry points ran" in text
    assert "3 CT scans ready" in outputs[-1] and "chapter 11 trained for one epoch" in outputs[-1]
    runs = list((book / "runs" / "p2ch11").glob("*-trn_cls-*"))
    assert runs, "the real epoch wrote its tensorboard logs in the book's folder"
    assert (book / "data-unversioned" / "cache" / "part2ch11_raw").is_dir(), "and filled chapter 11's cache"


@pytest.mark.slow
def test_second_edition_quickstart_installs_stages_gets_the_book_smokes_and_trains_chapter_13(
        scans: Scans, book2_bundle, book2_python: str, tmp_path: Path, fresh_runtime: Runtime, capsys) -> None:
    """The second edition's quick start from its own badge, in its own runtime: the tool, dlwpt-code-2e with its fixes,
    its requirements checked by the install step, the smoke run, then the book's own chapter-13 commands for one epoch."""
    from tests.conftest import pins_here

    bundle, commit = book2_bundle
    book = tmp_path / "content" / "dlwpt-code-2e"
    fixes = checked_out_with_candidates(book, {"edition": 2, "repo": str(bundle), "ref": commit}, scans, "dlwpt-code-2e.yaml",
                                        ("p2ch12 dataset", "p2ch13 training"), tmp_path, undo=True)
    capsys.readouterr()
    wheels = os.environ.get("PROVISION_TEST_WHEELS", "")
    requirements = tmp_path / "dlwpt-2e-here.txt"  # dlwpt-2e.txt as book2_python was filled from this wheel folder
    requirements.write_text(pins_here(REPO / "configs" / "requirements" / "dlwpt-2e.txt", Path(wheels))[0])
    outputs = execute("part2_quickstart_2e.ipynb", {
        "SUBSETS": "0", "BOOK_DIR": str(book), "BOOK_REPO": str(bundle), "BOOK_REF": commit, "SOURCES": [str(scans.folder)],
        "TOOL_SOURCE": fresh_runtime.tool_source, "PYTHON": book2_python, "WORKERS": 1,
        "EXTRA_SETS": small_data_sets(scans.manifest, f"book.fixes={fixes}", f"requirements.venv={Path(book2_python).parent.parent}",
                                      f"requirements.files=[{requirements}]", f"requirements.find_links=[{wheels}]", "requirements.no_index=true"),
    }, tmp_path, fresh_runtime.kernel)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    installed_in(fresh_runtime)
    assert "install    ok" in text, "the install step ran in this notebook (the book's requirements: all there already)"
    assert "p2ch12 dataset" in text and "p2ch13 training" in text and "all entry points ran" in text
    assert "3 CT scans ready" in outputs[-1] and "chapter 13 trained for one epoch" in outputs[-1]
    assert "f'{mhd_data_folder}/subset*/{series_uid}.mhd'" in (book / "p2ch12" / "dsets.py").read_text(), "the second edition's fixes"
    runs = list((book / "runs" / "p2ch13").glob("*-trn_cls-*"))
    assert runs, "the real epoch wrote its tensorboard logs in the book's folder"
    assert (book / "data-unversioned" / "cache" / "part2ch13_raw").is_dir(), "and filled chapter 13's cache"


@pytest.mark.slow
def test_setup_notebook_with_edition_2_plans_and_prepares_the_second_edition(built: Built, serve, book2_bundle, tmp_path: Path,
                                                                              fresh_runtime: Runtime) -> None:
    """EDITION = 2: the plan says so, the book's folder is named after the edition, dlwpt-code-2e is checked out there with
    its fixes; then EDITION = "auto" finds that checkout and keeps preparing the second edition."""
    srv = serve()
    bundle, commit = book2_bundle
    content = tmp_path / "content"
    params = {"EDITION": 2, "SUBSETS": "0", "BOOKS_DIR": str(content), "SOURCES": [srv.url + "/mirror/"], "CUDA_REQUIRED": False,
              "TOOL_SOURCE": fresh_runtime.tool_source, "BOOK": True, "BOOK_REPO": str(bundle), "BOOK_REF": commit, "SMOKE": False,
              "CACHE": "",  # LUNA-like scans, not the book's
              "EXTRA_SETS": small_data_sets(built.manifest, "requirements.files=[]")}
    outputs = execute("setup.ipynb", params, tmp_path, fresh_runtime.kernel)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    installed_in(fresh_runtime)
    book = content / "dlwpt-code-2e"
    assert f"edition 2; the data goes to {book / 'data-unversioned'}" in text
    assert "the second edition, 2026 (dlwpt-code-2e), from book.edition" in text, "the plan says which edition it prepares"
    assert "--edition 1" in text, "and how to pick the other"
    assert (book / "p2ch15" / "utils.py").is_file() and not (content / "dlwpt-code").exists()
    diff = subprocess.run(["git", "diff", "--name-only"], cwd=book, capture_output=True, text=True, check=True).stdout.split()
    assert diff == ["p2ch12/dsets.py", "util/disk.py"], "the second edition's fixes"
    assert (book / "data-unversioned" / "part2" / "luna" / "subset0").is_dir()
    summary = outputs[-1]
    assert f"book code:  {book} at {commit[:10]} (edition 2)" in summary
    assert "open colab/part2_quickstart_2e.ipynb" in summary and "python -m p2ch13.training" in summary

    outputs = execute("setup.ipynb", {**params, "EDITION": "auto"}, tmp_path, fresh_runtime.kernel)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    assert f"edition 2; the data goes to {book / 'data-unversioned'}" in text, "auto: the folder that holds a checkout, and its edition"
    assert "from the checkout on disk" in text and "(edition 2)" in outputs[-1]


def test_notebooks_are_stored_without_outputs() -> None:
    for path in sorted((REPO / "colab").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{path.name} has saved outputs: clear them"


def test_setup_notebook_stages_from_a_bucket_after_signing_in(built: Built, serve, tmp_path: Path, colab_kernel_env: Path, bucket,
                                                               book_bundle) -> None:
    for key in built.files:
        bucket.blob(f"luna16/{key}").upload_from_string((built.folder / key).read_bytes())
    fallback = serve()
    root = tmp_path / "content" / "dlwpt-code" / "data-unversioned"
    bundle, commit = book_bundle
    outputs = execute("setup.ipynb", {
        "SUBSETS": "0", "DATA_ROOT": str(root), "BUCKET": f"gs://{bucket.name}/luna16/", "CUDA_REQUIRED": False, "TOOL_SOURCE": "",
        "BOOK": True, "BOOK_REPO": str(bundle), "BOOK_REF": commit, "SMOKE": False, "CACHE": "",  # LUNA-like, not the book's scans
        "EXTRA_SETS": small_data_sets(built.manifest, "requirements.files=[]", f"data.zenodo_url={fallback.url}"),
    }, tmp_path)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    assert colab_kernel_env.read_text().splitlines() == ["auth.authenticate_user"], "signed in through google.colab.auth"
    assert f"sources: ['gs://{bucket.name}/luna16/', 'zenodo']" in text
    state = json.loads((root / ".provision" / "state.json").read_text())
    assert {k: v["source"] for k, v in state["files"].items()} == {
        "subset0.zip": f"gs://{bucket.name}/luna16/subset0.zip", "annotations.csv": f"gs://{bucket.name}/luna16/annotations.csv"}
    assert fallback.stats.bytes_sent == 0
    assert (root.parent / "p2ch11" / "training.py").is_file(), "the book's code is cloned around the staged data"
    assert (root / "part2" / "luna" / "subset0").is_dir()
    diff = subprocess.run(["git", "diff", "--name-only"], cwd=root.parent, capture_output=True, text=True, check=True).stdout.split()
    assert "p2ch14/training.py" in diff, "with its fixes"
    assert f"book code:  {root.parent} at {commit[:10]}" in outputs[-1]


@pytest.mark.slow
def test_kaggle_notebook_links_the_mounted_data_set_and_downloads_nothing(built: Built, serve, tmp_path: Path, fresh_runtime: Runtime,
                                                                           monkeypatch, book_bundle, read_only) -> None:
    """A fake Kaggle: KAGGLE_KERNEL_RUN_TYPE set AND google.colab importable (Kaggle's image is Colab's), LUNA16 read-only."""
    from tests.test_kaggle_and_copies import tree_digest, unpack_like_kaggle

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    data_sets = tmp_path / "kaggle" / "input"
    copy = read_only(unpack_like_kaggle(built, data_sets / "luna16-dataset", [0, 1]))
    before = tree_digest(copy)
    zenodo = serve()
    root = tmp_path / "kaggle" / "tmp" / "dlwpt-code" / "data-unversioned"
    bundle, commit = book_bundle
    outputs = execute("kaggle_setup.ipynb", {
        "SUBSETS": "0-1", "INPUT": str(data_sets), "DATA_ROOT": str(root), "TOOL_SOURCE": fresh_runtime.tool_source, "CUDA_REQUIRED": False,
        "BOOK": True, "BOOK_REPO": str(bundle), "BOOK_REF": commit, "SMOKE": False, "CACHE": "",  # LUNA-like, not the book's scans
        "EXTRA_SETS": small_data_sets(built.manifest, "requirements.files=[]", f"data.zenodo_url={zenodo.url}"),
    }, tmp_path, fresh_runtime.kernel)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    installed_in(fresh_runtime)
    assert "environment  kaggle" in text and "KAGGLE_KERNEL_RUN_TYPE is Interactive" in text
    assert "linked from " + str(data_sets) + ": subset0.zip, subset1.zip, annotations.csv" in outputs[-1]
    assert "downloaded:  nothing" in outputs[-1]
    assert zenodo.stats.requests == [] and tree_digest(copy) == before
    assert (root.parent / "p2ch14" / "training.py").is_file(), "the book's code around the links"
    assert all(p.is_symlink() for p in (root / "part2" / "luna" / "subset0").iterdir())


def test_setup_notebook_mirrors_to_drive_once_and_stages_from_there(built: Built, serve, tmp_path: Path, colab_kernel_env: Path) -> None:
    srv = serve()
    drive = tmp_path / "content" / "drive" / "MyDrive" / "luna16"
    root = tmp_path / "content" / "dlwpt-code" / "data-unversioned"
    params = {"SUBSETS": "0-1", "DATA_ROOT": str(root), "SOURCES": [srv.url + "/mirror/"], "DRIVE_MIRROR": str(drive) + "/",
              "CUDA_REQUIRED": False, "TOOL_SOURCE": "", "BOOK": False, "SMOKE": False,
              "EXTRA_SETS": small_data_sets(built.manifest, "requirements.files=[]")}
    outputs = execute("setup.ipynb", params, tmp_path)
    text = "\n".join(outputs)
    assert "ERROR" not in text, text
    assert colab_kernel_env.read_text().splitlines() == ["drive.mount /content/drive"]
    for key in ("subset0.zip", "subset1.zip", "annotations.csv"):
        assert (drive / key).read_bytes() == (built.folder / key).read_bytes()
    state = json.loads((root / ".provision" / "state.json").read_text())
    assert all(rec["source"].startswith(str(drive)) for rec in state["files"].values()), "staged from the Drive copy"
    sent = srv.stats.bytes_sent
    shutil.rmtree(root)  # a new Colab session: the runtime's disk is empty, Drive is not
    outputs = execute("setup.ipynb", params, tmp_path)
    assert "ERROR" not in "\n".join(outputs)
    assert srv.stats.bytes_sent == sent, "the second session fetched nothing from the server"
    assert "staged:     subset0.zip, subset1.zip, annotations.csv" in outputs[-1]
