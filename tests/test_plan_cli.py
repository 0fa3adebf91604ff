from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from provision.book.checkout import CheckoutFacts
from provision.book.fixes import load_book_manifest
from provision.cli import main
from provision.config import configs_dir, load_config
from provision.disk import GB
from provision.environment import FsFacts, detect
from provision.manifest import load_manifest
from provision.plan import BookFacts, Facts, make_plan
from provision.torch_wheels import load_table
from tests.conftest import run_cli


def colab_facts(free_bytes: int, installed: dict[str, str] | None = None) -> Facts:
    env = detect({}, colab_importable=True, dmi={})
    return Facts(
        environment=env,
        installed=installed if installed is not None else {"torch": "2.11.0", "torchvision": "0.26.0", "numpy": "2.1.0"},
        nvidia_smi={"driver_version": "570.172.08", "cuda_version": "12.8", "gpus": [{"name": "Tesla T4", "memory_mib": 15360, "compute_capability": 7.5}]},
        wheels=load_table(configs_dir()),
        data_fs=FsFacts(path="/content/dlwpt-code/data-unversioned", probe="/", device=1, free_bytes=free_bytes, total_bytes=110 * GB),
        statuses={},
        environ={},
        book=BookFacts(load_book_manifest("book/dlwpt-code.yaml", configs_dir()), CheckoutFacts("/content/dlwpt-code", False, None, (), "inside"), ()),
    )


def test_colab_plan_is_complete_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "-c", "colab", "--json"], environ={"HOME": "/root"})
    plan = json.loads(capsys.readouterr().out)
    assert code == (0 if plan["feasible"] else 3)
    assert plan["environment"]["kind"] in ("colab", "vm", "local") and plan["profile"] == "colab"
    keys = [f["key"] for f in plan["data"]["files"]]
    assert keys[0] == "subset0.zip" and keys[-1] == "annotations.csv", "as many subsets as fit here, from the first"
    assert keys[:-1] == [f"subset{i}.zip" for i in range(len(keys) - 1)] and "data.subsets is fit" in plan["data"]["subsets_reason"]
    first = plan["data"]["files"][0]
    assert first["locations"][0]["url"] == "https://zenodo.org/records/3723295/files/subset0.zip?download=1"
    assert first["dest"] == "/content/dlwpt-code/data-unversioned/part2/luna"
    disk = plan["disk"][0]
    assert disk["path"] == "/content/dlwpt-code/data-unversioned"
    assert disk["archive_bytes"] == sum(f["size"] for f in plan["data"]["files"]) >= 6811924508 + 136986  # subset 0 at least: what fits here
    assert {"needed_bytes", "free_bytes", "fits", "peak_bytes", "reserve_bytes"} <= set(disk)
    assert plan["gpu"]["required"] is True and plan["gpu"]["min_memory_gb"] == 8


def test_colab_with_torch_preinstalled_keeps_it() -> None:
    config = load_config("colab", environ={})
    plan = make_plan(config, load_manifest("luna16", configs_dir()), colab_facts(70 * GB))
    actions = {r.name: r.action for r in plan.install.requirements}
    assert actions["torch"] == actions["numpy"] == "satisfied"
    assert actions["simpleitk"] == actions["diskcache"] == "install"
    assert "jupyter" not in actions, "Colab is the notebook: no jupyter meta-package"
    planned = [p for cmd in plan.install.commands for p in cmd.packages]
    assert not any(p.startswith(("torch", "numpy")) for p in planned)


def test_numpy_before_2_and_torch_before_2_3_are_replaced() -> None:
    """p2ch13 uses np.bool (gone in numpy 1.24-1.26, back in 2.0); torch before 2.3 was not built for numpy 2."""
    config = load_config("colab", environ={})
    plan = make_plan(config, load_manifest("luna16", configs_dir()), colab_facts(70 * GB, {"torch": "2.2.2", "numpy": "1.26.4", "scipy": "1.17.1"}))
    actions = {r.name: (r.action, r.reason) for r in plan.install.requirements}
    assert actions["numpy"] == ("install", "1.26.4 does not satisfy >=2.0")
    assert actions["torch"][0] == "install" and actions["scipy"][0] == "satisfied"
    vm = load_config("vm", environ={"HOME": "/h"})
    assert "jupyter" in {r.name for r in make_plan(vm, load_manifest("luna16", configs_dir()), colab_facts(500 * GB)).install.requirements}


def test_plan_refuses_when_disk_is_short_and_names_what_fits() -> None:
    config = load_config("colab", ["data.subsets=all", "data.root=/home/u/dlwpt-code/data-unversioned"], environ={})
    plan = make_plan(config, load_manifest("luna16", configs_dir()), colab_facts(int(78.1 * GB)))
    assert not plan.feasible
    problem = plan.problems[0]
    assert problem.exit_code == 3
    assert "/home/u/dlwpt-code/data-unversioned" in problem.message
    assert "78.1 GB is free" in problem.message and "needs" in problem.message
    # each subset: about 6.6 GB of archive, ~12 GB unpacked and 6.5 GB for the book's chapter-11 cache, compressed by its fixes
    assert "subsets 0-3 fit in 78.1 GB free" in problem.hint and "--subsets 0-3" in problem.hint
    assert "6.5 GB for each of 10 subsets, what one chapter's cache measures" in problem.hint and "--root" in problem.hint


def test_the_cache_reserve_is_measured_per_chapter_and_follows_the_fixes_and_book_cache() -> None:
    """Entries per subset x one entry's measured bytes: compressed when the book's cache fixes apply, raw otherwise; one
    chapter at a time (the largest), or the chapters `provision cache` builds together."""
    manifest = load_manifest("luna16", configs_dir())
    fixed = make_plan(load_config("colab", ["data.subsets=0-1"], environ={}), manifest, colab_facts(500 * GB))
    assert fixed.cache is not None and fixed.cache.together == (11,)
    assert fixed.disk[0].cache_bytes == 2 * fixed.cache.bytes_per_subset and 6 * GB < fixed.cache.bytes_per_subset < 7 * GB
    raw = make_plan(load_config("colab", ["data.subsets=0-1", "book.enabled=false"], environ={}), manifest, colab_facts(500 * GB))
    assert raw.cache is not None and raw.cache.together == (13,), "stored raw, chapter 13's crops are the largest"
    assert 17 * GB < raw.cache.bytes_per_subset < 19 * GB
    short = make_plan(load_config("colab", ["data.subsets=all", "book.enabled=false"], environ={}), manifest, colab_facts(100 * GB))
    assert "let the book's cache fixes compress it" in short.problems[0].hint, "a raw cache's plan says how to shrink it"
    both = make_plan(load_config("colab", ["data.subsets=0-1", "book.cache=[11, 13]"], environ={}), manifest, colab_facts(500 * GB))
    assert both.cache is not None and both.cache.together == (11, 13)
    assert both.cache.bytes_per_subset == sum(c.bytes_per_subset for c in both.cache.chapters if c.chapter in (11, 13))


def test_colab_stages_as_many_subsets_as_fit() -> None:
    manifest = load_manifest("luna16", configs_dir())
    plan = make_plan(load_config("colab", environ={}), manifest, colab_facts(int(78.1 * GB)))
    assert plan.feasible and plan.data.subsets == (0, 1, 2, 3), plan.data.subsets_reason
    assert "0-3 of 0-9 fit in 78.1 GB free" in plan.data.subsets_reason
    small = make_plan(load_config("colab", environ={}), manifest, colab_facts(int(45 * GB)))
    assert small.data.subsets == (0, 1)


def test_a_cache_on_a_network_or_fuse_filesystem_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    from provision.cacheplan import fs_type_of

    mounts = "drive /content/drive fuse.drive rw 0 0\n/dev/sda1 / ext4 rw 0 0\nfs:/share /mnt/lab\\040share nfs4 rw 0 0\n"
    assert fs_type_of("/content/drive/MyDrive/data-unversioned/cache", mounts) == "fuse.drive"
    assert fs_type_of("/mnt/lab share/x", mounts) == "nfs4" and fs_type_of("/content/x", mounts) == "ext4"
    manifest = load_manifest("luna16", configs_dir())
    for fs_type in ("fuse.drive", "nfs4", "cifs", "fuse.gcsfuse"):
        plan = make_plan(load_config("colab", ["data.subsets=0"], environ={}), manifest, replace(colab_facts(500 * GB), cache_fs_type=fs_type))
        problem = next(p for p in plan.problems if p.step == "cache")
        assert fs_type in problem.message and "malformed" in problem.message and "/content" in problem.hint
    assert make_plan(load_config("colab", ["data.subsets=0"], environ={}), manifest, replace(colab_facts(500 * GB), cache_fs_type="fuseblk")).feasible


def test_plan_counts_only_what_is_left_to_fetch(tmp_path: Path) -> None:
    from provision.plan import FileStatus

    config = load_config("colab", environ={})
    facts = colab_facts(100 * GB)
    fresh = make_plan(config, load_manifest("luna16", configs_dir()), facts)
    statuses = {"subset0.zip": FileStatus("subset0.zip", "extracted"), "subset1.zip": FileStatus("subset1.zip", "partial", partial_bytes=10**9)}
    resumed = make_plan(config, load_manifest("luna16", configs_dir()), Facts(**{**facts.__dict__, "statuses": statuses}))
    assert resumed.disk[0].archive_bytes == fresh.disk[0].archive_bytes - 6811924508 - 10**9
    assert resumed.data.files[1].stage == "partial"


def test_cli_exits_3_on_a_small_disk_and_0_with_room(tmp_path: Path, small_tmpfs, capsys: pytest.CaptureFixture[str]) -> None:
    small = small_tmpfs(20 * 1024 * 1024)
    code = main(["plan", "-c", "colab", "--root", str(small / "data")])
    captured = capsys.readouterr()
    assert code == 3
    assert "not enough disk space at" in captured.out and str(small / "data") in captured.out
    assert "only 21.0 MB is free" in captured.out
    assert not (small / "data").exists()  # plan writes nothing
    code = main(["plan", "-c", "colab", "--root", str(small / "data"), "--set", "data.dataset=" + str(tiny_manifest(tmp_path)),
                 "--set", "data.cache_gb_per_subset=0", "--set", "data.margin_gb=0"])
    assert code == 0, capsys.readouterr().out


def tiny_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ndir: t\nfiles:\n  - {key: subset0.zip, size: 1000, unpack: true, unpacked_size: 3000}\n  - {key: subset1.zip, size: 1000, unpack: true, unpacked_size: 3000}\n")
    return path


def test_cli_exit_3_when_reserve_exceeds_free_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "-c", "local", "--root", str(tmp_path / "d"), "--set", "data.reserve_gb=100000000", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert code == 3 and plan["feasible"] is False
    assert plan["disk"][0]["shortfall_bytes"] > 0
    assert "reserve_gb" in plan["problems"][0]["hint"]
    assert not (tmp_path / "d").exists()


def test_plan_writes_nothing(tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    assert main(["plan", "-c", "local", "--root", str(tmp_path / "code" / "r"), "--set", f"data.dataset={tiny_manifest(tmp_path)}",
                 "--set", "data.cache_gb_per_subset=0"], stdout=io.StringIO()) == 0
    assert sorted(tmp_path.rglob("*")) == sorted([*before, tmp_path / "tiny.yaml"])


def test_unresolved_sizes_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("name: m\nfiles:\n  - {key: candidates.csv, record: '3723295'}\n")
    assert main(["plan", "-c", "local", "--root", str(tmp_path / "code" / "r"), "--set", f"data.dataset={m}", "--set", "data.cache_gb_per_subset=0"]) == 0
    assert "size unresolved" in capsys.readouterr().out


def test_up_dry_run_equals_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-c", "local", "--root", str(tmp_path / "r"), "--set", f"data.dataset={tiny_manifest(tmp_path)}", "--json"]
    main(["plan", *args])
    plan = json.loads(capsys.readouterr().out)
    main(["up", "--dry-run", *args])
    again = json.loads(capsys.readouterr().out)
    for p in (plan, again):  # free space moves with whatever else runs on the machine
        for key in ("free_bytes", "fits", "shortfall_bytes", "fitting_subsets_text"):
            p["disk"][0].pop(key)
        p["data"].pop("mode_reason")
    assert again == plan


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert main(["up", "--skip", "lunch"]) == 2
    assert "hint:" in capsys.readouterr().err


def test_subprocess_plan_ci_json_and_lazy_imports() -> None:
    proc = run_cli("plan", "-c", "ci", "--json")
    assert proc.returncode in (0, 3), proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["profile"] == "ci" and plan["data"]["subsets"] == [0]
    code = ("import sys; from provision.cli import main; import io; main(['plan', '-c', 'ci'], stdout=io.StringIO()); "
            "print(sorted(m for m in ('torch', 'google.cloud.storage', 'requests', 'tqdm') if m in sys.modules))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("plan", "up", "install", "check", "stage", "verify", "status"):
        assert command in proc.stdout


def test_the_plan_says_what_each_chapter_costs_from_what_was_measured_here() -> None:
    from dataclasses import replace

    from provision.report import plan_text

    manifest = load_manifest("luna16", configs_dir())
    config = load_config("colab", ["data.subsets=0-1"], environ={})
    unmeasured = plan_text(make_plan(config, manifest, colab_facts(500 * GB)))
    assert "not measured on this machine yet" in unmeasured
    timings = {"cache": {"11": {"core_s_per_entry": 0.004, "measured_on": "2 worker(s)"}},
               "epoch": {"p2ch11 training": {"s_per_sample": 0.002, "device": "cuda"}}}
    plan = make_plan(config, manifest, replace(colab_facts(500 * GB), timings=timings, cores=2))
    assert plan.cache is not None
    ch11 = next(c for c in plan.cache.chapters if c.chapter == 11)
    assert ch11.build_s_per_subset == pytest.approx(ch11.entries_per_subset * 0.004 / 2)
    assert ch11.epoch_s_per_subset == pytest.approx(ch11.entries_per_subset * 0.002)
    text = plan_text(plan)
    line = text.split("  chapter 11:")[1].splitlines()[1]
    assert "cache build ~3 min" in line and "one epoch ~3 min" in line and "cuda" in line, line


def test_the_common_options_go_before_or_after_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tiny_manifest(tmp_path)
    after = ["plan", "-c", "colab", "--root", str(tmp_path / "r"), "--set", f"data.dataset={manifest}", "--subsets", "1", "--json"]
    before = ["-c", "colab", "--root", str(tmp_path / "r"), "--set", f"data.dataset={manifest}", "--subsets", "1", "--json", "plan"]
    plans = []
    for argv in (after, before):
        main(argv, environ={"HOME": str(tmp_path)})
        plans.append(json.loads(capsys.readouterr().out))
    assert [p["profile"] for p in plans] == ["colab", "colab"] and plans[1]["data"]["subsets"] == [1]
    assert plans[1]["data"]["target_dir"] == plans[0]["data"]["target_dir"] == str(tmp_path / "r" / "t")
    # some before, some after: --set adds up, an option given after the command wins
    main(["--set", f"data.dataset={manifest}", "-c", "local", "--subsets", "0", "plan", "--set", f"data.root={tmp_path / 'r2'}",
          "--subsets", "1", "--json"], environ={"HOME": str(tmp_path)})
    mixed = json.loads(capsys.readouterr().out)
    assert mixed["profile"] == "local" and mixed["data"]["subsets"] == [1] and mixed["data"]["target_dir"] == str(tmp_path / "r2" / "t")


def test_help_names_every_shipped_profile_and_fit() -> None:
    profiles = sorted(p.stem for p in configs_dir().glob("*.yaml") if p.stem != "base")
    assert {"kaggle", "colab", "vm", "vm-gcp", "local", "ci"} <= set(profiles) and "base" not in profiles
    text = " ".join(run_cli("plan", "--help").stdout.split())
    assert f"profile name ({', '.join(profiles)})" in text, text
    assert "fit (as many as the disk holds)" in text, text
    top = run_cli("--help").stdout
    assert "[-c PROFILE_OR_PATH]" in top and "[--subsets SUBSETS]" in top and "BEFORE" not in top, "the options before the command, as users write them"


def test_quiet_prints_only_the_summary_and_errors(built, write_profile, serve, capsys: pytest.CaptureFixture[str]) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0-1"})
    assert main(["stage", "-c", str(profile), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and "done in" in quiet.out, quiet
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "2"}, name="p2.yaml")
    assert main(["-q", "stage", "-c", str(profile)]) == 0
    assert capsys.readouterr().err == ""
    srv.faults.missing = {"subset3.zip"}
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "3"}, name="p3.yaml")
    assert main(["up", "-q", "-c", str(profile), "--only", "data"]) == 1
    failed = capsys.readouterr()
    assert "subset3.zip" in failed.out and "FAILED" in failed.out and "no other source" not in failed.err, failed


def test_stage_dry_run_prints_the_data_part_of_the_plan_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-c", "local", "--root", str(tmp_path / "r"), "--set", f"data.dataset={tiny_manifest(tmp_path)}"]
    assert main(["stage", "--dry-run", *args]) == 0
    text = capsys.readouterr().out
    assert "subset0.zip" in text and "disk " in text and "feasible     yes" in text
    assert "install " not in text and "gpu " not in text and "python " not in text, text
    assert main(["stage", "--dry-run", "--json", *args]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"profile", "data", "disk", "feasible", "problems"} and [f["key"] for f in data["data"]["files"]] == ["subset0.zip", "subset1.zip"]
    assert main(["stage", "--dry-run", *args, "--set", "data.reserve_gb=100000000"]) == 3
    assert "feasible     NO" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()
