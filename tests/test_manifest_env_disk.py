from __future__ import annotations

from pathlib import Path

import pytest

from provision.config import configs_dir
from provision.disk import GB, DiskItem, DiskRules, plan_disk
from provision.environment import cloud_from_dmi, detect, fs_facts
from provision.errors import ConfigError
from provision.manifest import format_subsets, load_manifest

# ---------------------------------------------------------------- manifests


def test_luna16_manifest_matches_the_published_facts() -> None:
    m = load_manifest("luna16", configs_dir())
    assert m.dir == "part2/luna"
    subsets = [f for f in m.files if f.subset is not None]
    assert [f.subset for f in subsets] == list(range(10))
    assert sum(f.size or 0 for f in subsets) == 66_337_930_718
    assert {f.record for f in subsets[:7]} == {"3723295"} and {f.record for f in subsets[7:]} == {"4121926"}
    assert all(f.unpack and f.md5 and len(f.md5) == 32 for f in subsets)
    assert m.select((2,)) == (m.files[2], m.files[10])  # the CSV has no subset number: always staged


def test_selecting_a_subset_that_does_not_exist() -> None:
    m = load_manifest("luna16", configs_dir())
    with pytest.raises(ConfigError, match="no subset 12.*it has 0-9"):
        m.select((1, 12))


def test_manifest_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("name: x\nfiles:\n  - {key: a.zip, md5: nothex, size: 3}\n")
    with pytest.raises(ConfigError, match=r"files\[0\]\.md5.*32 hex"):
        load_manifest(str(bad), configs_dir())
    bad.write_text("name: x\nfiles:\n  - {key: a.zip, sise: 3}\n")
    with pytest.raises(ConfigError, match="did you mean 'size'"):
        load_manifest(str(bad), configs_dir())
    bad.write_text("name: x\nfiles:\n  - {key: ../a.zip}\n")
    with pytest.raises(ConfigError, match="plain file name"):
        load_manifest(str(bad), configs_dir())
    bad.write_text("name: x\nfiles:\n  - {key: a.zip}\n  - {key: a.zip}\n")
    with pytest.raises(ConfigError, match="repeated file keys: a.zip"):
        load_manifest(str(bad), configs_dir())


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="luna16"):
        load_manifest("luna17", configs_dir())


def test_format_subsets() -> None:
    assert format_subsets((0, 1, 2, 4, 6, 7)) == "0-2,4,6-7"

# ---------------------------------------------------------------- environment


def test_detect_colab_by_module() -> None:
    env = detect({}, colab_importable=True, dmi={})
    assert env.kind == "colab" and env.profile == "colab" and not env.ci


def test_detect_kaggle_is_not_colab() -> None:
    env = detect({"COLAB_RELEASE_TAG": "x", "KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, colab_importable=False, dmi={})
    assert env.kind == "kaggle" and env.profile == "kaggle"


def test_detect_gcp_vm_from_dmi_and_ci_flag() -> None:
    env = detect({"CI": "true"}, colab_importable=False, dmi={"product_name": "Google Compute Engine"})
    assert env.kind == "vm" and env.cloud == "gcp" and env.ci and env.profile == "ci"
    assert cloud_from_dmi({"sys_vendor": "Amazon EC2"}) == "aws"


def test_detect_local() -> None:
    env = detect({"CI": "false"}, colab_importable=False, dmi={"sys_vendor": "LENOVO"})
    assert env.kind == "local" and not env.ci and env.python_version.count(".") == 2


def test_fs_facts_of_a_path_that_does_not_exist_yet(tmp_path: Path) -> None:
    facts = fs_facts(tmp_path / "a" / "b" / "c")
    assert facts.probe == str(tmp_path)
    assert 0 < facts.free_bytes <= facts.total_bytes
    assert not (tmp_path / "a").exists()

# ---------------------------------------------------------------- disk arithmetic


def items(n: int, size: int, ratio: float = 2.0) -> list[DiskItem]:
    return [DiskItem(f"subset{i}.zip", i, size, int(size * ratio), unpack=True) for i in range(n)]


def test_peak_counts_unpacked_plus_archives_in_flight() -> None:
    plan = plan_disk(items(5, 10 * GB), path="/d", probe="/d", free_bytes=1000 * GB, rules=DiskRules(0, 0, False, 2))
    assert plan.unpacked_bytes == 100 * GB
    assert plan.archives_in_flight_bytes == 20 * GB
    assert plan.peak_bytes == 120 * GB and plan.final_bytes == 100 * GB and plan.needed_bytes == 120 * GB
    kept = plan_disk(items(5, 10 * GB), path="/d", probe="/d", free_bytes=1000 * GB, rules=DiskRules(0, 0, True, 2))
    assert kept.peak_bytes == 150 * GB and kept.final_bytes == 150 * GB


def test_reserve_applies_after_staging_not_at_peak() -> None:
    plan = plan_disk(items(2, 10 * GB), path="/d", probe="/d", free_bytes=1000 * GB, rules=DiskRules(5 * GB, 1 * GB, False, 2))
    # peak 60 GB (40 unpacked + 20 in flight) beats final 40 + reserve 5
    assert plan.needed_bytes == 61 * GB
    plan = plan_disk(items(2, 10 * GB), path="/d", probe="/d", free_bytes=1000 * GB, rules=DiskRules(80 * GB, 0, False, 2))
    assert plan.needed_bytes == 120 * GB


def test_which_subsets_fit_when_not_all_do() -> None:
    plan = plan_disk(items(10, 6 * GB), path="/content", probe="/", free_bytes=int(78.1 * GB), rules=DiskRules(15 * GB, 1 * GB, False, 3))
    assert not plan.fits
    # n subsets need max(12n + 18, 12n + 15) + 1 = 12n + 19 GB; n = 4 -> 67, n = 5 -> 79 > 78.1
    assert plan.fitting_subsets == (0, 1, 2, 3)
    assert plan.fitting_text() == "subsets 0-3 fit in 78.1 GB free"
    assert plan.shortfall_bytes == plan.needed_bytes - plan.free_bytes


def test_stream_mode_needs_no_room_for_archives() -> None:
    rules = DiskRules(0, 0, keep_archives=True, files_in_flight=3, stream=True)
    plan = plan_disk(items(4, 10 * GB), path="/d", probe="/d", free_bytes=80 * GB, rules=rules)
    assert plan.mode == "stream" and plan.peak_bytes == 80 * GB and plan.archives_in_flight_bytes == 0 and plan.fits


def test_nothing_fits() -> None:
    plan = plan_disk(items(3, 6 * GB), path="/x", probe="/x", free_bytes=GB, rules=DiskRules(0, 0, False, 1))
    assert plan.fitting_subsets == () and "not even one subset" in plan.fitting_text()


def test_when_only_the_reserve_is_in_the_way_say_what_fits_without_it() -> None:
    plan = plan_disk(items(4, 10 * GB), path="/d", probe="/d", free_bytes=50 * GB, rules=DiskRules(80 * GB, 0, False, 1))
    assert plan.fitting_subsets == ()
    assert plan.fitting_without_reserve == (0, 1)  # 2 subsets: 40 GB unpacked + one 10 GB archive
