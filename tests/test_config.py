from __future__ import annotations

from pathlib import Path

import pytest

from provision.cli import main
from provision.config import load_config
from provision.errors import ConfigError
from provision.manifest import parse_subsets

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", ["colab", "vm", "local", "ci"])
def test_every_shipped_profile_loads(profile: str) -> None:
    config = load_config(profile, environ={"HOME": "/home/reader", "PWD": "/w"})
    assert config.name == profile
    assert config.files[0].endswith("base.yaml") and config.files[-1].endswith(f"{profile}.yaml")
    assert config.requirements.files and Path(config.requirements.files[0]).is_file()
    assert Path(config.data.root).is_absolute()


def test_colab_profile_values() -> None:
    config = load_config("colab", environ={})
    assert config.cuda.required is True and config.cuda.min_memory_gb == 8
    assert config.data.subsets == "fit", "as many subsets as fit the runtime's disk, with the book's cache"
    assert config.data.root == "/content/dlwpt-code/data-unversioned"
    assert [s.kind for s in config.data.sources] == ["zenodo"]


def test_misspelled_key_names_file_path_and_suggestion(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: %s\ndata:\n  reserv_gb: 20\n" % (REPO / "configs" / "base.yaml"))
    with pytest.raises(ConfigError) as info:
        load_config(str(bad), environ={})
    message = info.value.message
    assert str(bad) in message
    assert "data.reserv_gb" in message
    assert "did you mean 'reserve_gb'?" in message
    assert info.value.exit_code == 2


def test_misspelled_key_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data-root"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {REPO / 'configs' / 'local.yaml'}\ndata:\n  root: {root}\n  sourcs: [zenodo]\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["up", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'sources'?" in err and "hint:" in err
    assert sorted(tmp_path.rglob("*")) == before
    assert not root.exists()


def test_wrong_type_names_key_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cuda:\n  required: maybe\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad), environ={})
    assert "cuda.required" in info.value.message and "true or false" in info.value.message


def test_negative_number_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.reserve_gb.*negative"):
        load_config("local", ["data.reserve_gb=-5"], environ={})


def test_extends_merges_deeply_and_replaces_lists(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {REPO / 'configs' / 'vm.yaml'}\ndata:\n  sources: [https://mirror.example.org/luna/]\n  connections: 4\n")
    config = load_config(str(child), environ={"HOME": "/h"})
    assert config.data.connections == 4
    assert config.data.cache_gb_per_subset is None and config.book.enabled  # from base (auto: measured per chapter) and vm
    assert [s.location for s in config.data.sources] == ["https://mirror.example.org/luna/"]
    assert config.cuda.min_memory_gb == 8


def test_set_overrides_and_is_validated() -> None:
    config = load_config("local", ["data.subsets=0-3", "data.reserve_gb=20", "cuda.required=true"], environ={})
    assert config.data.subsets == (0, 1, 2, 3) and config.data.reserve_gb == 20 and config.cuda.required
    with pytest.raises(ConfigError, match="did you mean 'connections'"):
        load_config("local", ["data.conections=2"], environ={})
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config("local", ["novalue"], environ={})


def test_paths_expand_home_and_variables(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("data:\n  root: ${SCRATCH}/dlwpt\n  sources: [~/luna-copy]\n")
    config = load_config(str(profile), environ={"SCRATCH": "/mnt/ssd", "HOME": "/home/r"})
    assert config.data.root == "/mnt/ssd/dlwpt"
    assert config.data.sources[0].kind == "local" and config.data.sources[0].location == "/home/r/luna-copy"
    with pytest.raises(ConfigError, match=r"\$\{SCRATCH\} is not set"):
        load_config(str(profile), environ={"HOME": "/h"})


def test_provision_config_variable_and_default_profile(tmp_path: Path) -> None:
    profile = tmp_path / "mine.yaml"
    profile.write_text("description: mine\n")
    assert load_config(environ={"PROVISION_CONFIG": str(profile)}).description == "mine"
    assert load_config(environ={}, default_profile="colab").name == "colab"


def test_unknown_profile_suggests_close_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'colab'"):
        load_config("colb", environ={})


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  root: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(str(bad), environ={})


def test_non_mapping_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(bad), environ={})


def test_extends_loop_detected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(str(tmp_path / "a.yaml"), environ={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("all", None), ("0-3", (0, 1, 2, 3)), ("0,2,5", (0, 2, 5)), ([5, 0, 2], (0, 2, 5)), (3, (3,)), ("0-1, 7", (0, 1, 7))],
)
def test_subset_syntax(value: object, expected: object) -> None:
    assert parse_subsets(value) == expected


@pytest.mark.parametrize("value", ["3-1", "a", "", [True], "1-", -1])
def test_subset_syntax_errors(value: object) -> None:
    with pytest.raises(ValueError):
        parse_subsets(value)


def test_sources_validated() -> None:
    with pytest.raises(ConfigError, match="must end with '/'"):
        load_config("local", ["data.sources=[https://example.org/luna]"], environ={})
    with pytest.raises(ConfigError, match="only allowed for loopback"):
        load_config("local", ["data.sources=[http://example.org/luna/]"], environ={})
    ok = load_config("local", ["data.sources=[http://example.org/luna/]", "data.allow_insecure=true"], environ={})
    assert ok.data.sources[0].kind == "http"
    loop = load_config("local", ["data.sources=[http://127.0.0.1:8000/x/, gs://bucket/luna, zenodo]"], environ={})
    assert [s.kind for s in loop.data.sources] == ["http", "gs", "zenodo"]
    assert loop.data.sources[1].location == "gs://bucket/luna/"
    with pytest.raises(ConfigError, match="unsupported scheme"):
        load_config("local", ["data.sources=[ftp://x/]"], environ={})


def test_requirement_files_resolve_relative_to_their_profile(tmp_path: Path) -> None:
    (tmp_path / "reqs").mkdir()
    (tmp_path / "reqs" / "r.txt").write_text("numpy\n")
    profile = tmp_path / "p.yaml"
    profile.write_text("requirements:\n  files: [reqs/r.txt]\n")
    config = load_config(str(profile), environ={})
    assert config.requirements.files == (str(tmp_path / "reqs" / "r.txt"),)


def test_config_is_frozen() -> None:
    config = load_config("local", environ={})
    with pytest.raises(AttributeError):
        config.data.reserve_gb = 1  # type: ignore[misc]
