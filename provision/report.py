"""Turning plans, results and events into text for people and JSON for programs."""

from __future__ import annotations

import json
import os
import shlex
from typing import TYPE_CHECKING, Any

from .bookreport import book_plan_text, cache_plan_lines
from .disk import gb
from .planvalues import FilePlan, Plan, Problem
from .results import PinResult, StatusResult, UpResult, VerifyResult

if TYPE_CHECKING:  # annotations only: rendering a value never needs the code that made it
    from .cacheplan import CachePlan
    from .clean import CleanPlan
    from .disk import DiskPlan
    from .gpu import GpuReport
    from .install import InstallPlan
    from .staging.engine import StageResult
    from .staging.mirror import MirrorResult
    from .vm import VmPlan


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def plan_text(plan: Plan) -> str:
    """The whole plan for people: where we are, what is installed, the GPU wanted, the data and the disk, the book's
    cache and code, and whether it can run."""
    env = plan.environment
    lines = [
        f"profile      {plan.profile}  ({', '.join(plan.config_files)})",
        f"environment  {env.kind}{' + ci' if env.ci else ''}  ({'; '.join(env.reasons)})",
        f"python       {env.python_version} at {env.python_executable}  (profile wants {plan.python_requirement}: {'ok' if plan.python_ok else 'NO'})",
        f"os           {env.os} {env.machine}",
        "",
        *_install_lines(plan),
        "",
        _gpu_line(plan),
        "",
        *_data_lines(plan),
    ]
    for disk in plan.disk:
        lines += _disk_lines(disk, plan.cache)
    lines += cache_plan_lines(plan.cache, max((d.subsets for d in plan.disk), default=0))
    if plan.book is not None:
        lines += ["", book_plan_text(plan.book, full=False)]
    lines += ["", "feasible     yes" if plan.feasible else "feasible     NO"]
    for p in plan.problems:
        lines += [f"  {p.message}", f"  hint: {p.hint}"]
    return "\n".join(lines)


def stage_plan_text(plan: Plan, problems: list[Problem]) -> str:
    """The data part of the plan (what `stage --dry-run` prints): each file with its source and destination, the way
    chosen, the disk at the peak and the cache's reserve, and whether staging can run."""
    lines = [f"profile      {plan.profile}", "", *_data_lines(plan)]
    for disk in plan.disk:
        lines += _disk_lines(disk, plan.cache)
    lines += ["", "feasible     NO" if problems else "feasible     yes"]
    for p in problems:
        lines += [f"  {p.message}", f"  hint: {p.hint}"]
    return "\n".join(lines)


def stage_plan_dict(plan: Plan, problems: list[Problem]) -> dict[str, Any]:
    whole = plan.to_dict()
    return {"profile": plan.profile, "data": whole["data"], "disk": whole["disk"], "feasible": not problems,
            "problems": [raw for raw, p in zip(whole["problems"], plan.problems, strict=True) if p in problems]}


def _install_lines(plan: Plan) -> list[str]:
    lines = [f"install      with {os.path.basename(plan.install.installer)} into {plan.install.target_python}"]
    for r in plan.install.requirements:
        mark = {"satisfied": "ok  ", "install": "add ", "not-needed": "skip"}[r.action]
        lines.append(f"  {mark} {r.requirement:<28} {r.reason}")
    if plan.install.to_install and plan.install.torch_index:
        lines.append(f"  torch from {plan.install.torch_index}  ({plan.install.torch_index_reason})")
    lines += ["  $ " + shlex.join(cmd.argv) for cmd in plan.install.commands] or ["  nothing to install"]
    return lines


def _gpu_line(plan: Plan) -> str:
    gpu = plan.gpu
    extra = f", at least {gpu.min_memory_gb:g} GB" if gpu.min_memory_gb else ""
    extra += f", compute capability >= {gpu.min_compute_capability}" if gpu.min_compute_capability else ""
    return f"gpu          {'required' if gpu.required else 'optional'}{extra}  (checked by `provision check`)"


def _data_lines(plan: Plan) -> list[str]:
    data = plan.data
    lines = [f"data         {data.dataset} ({data.manifest}), {data.connections} connections", f"  mode       {data.mode}: {data.mode_reason}"]
    if data.subsets_reason:
        lines.append(f"  subsets    {data.subsets_reason}")
    if data.subsets_left_out:
        lines.append(f"  left out   {data.subsets_left_out}")
    if data.mode == "stream":
        ahead = (f", at most {data.stream_read_ahead_bytes / 1e6:.0f} MB read ahead in memory "
                 f"(chunks of {data.stream_chunk_bytes / 1e6:.0f} MB, a request each)" if data.stream_read_ahead_bytes else "")
        lines.append(f"  streams    up to {data.files_at_once} archive(s) at once, up to {data.stream_ranges} connection(s) each{ahead}; "
                     "each archive inflated in order and its md5 checked")
    if len(data.ways) > 1:
        lines.append("  ways       the first that fits is used; time relative to the fastest, at nominal rates")
        for w in data.ways:
            mark = "  <- chosen" if w.chosen else ""
            lines.append(f"    {w.label:<30} needs {gb(w.needed_bytes):>9}  x{w.relative_time:<5.2f} {'fits' if w.fits else 'does not fit'}{mark}")
    lines += [f"  into       {data.target_dir}", f"  sources    {', '.join(data.sources)}"]
    lines += [_file_line(f) for f in data.files]
    if plan.assets is not None:
        lines += [f"  chapter 15 Segment Anything checkpoints (book.sam), into {plan.assets.target_dir}, from {', '.join(plan.assets.sources)}",
                  *[_file_line(f) for f in plan.assets.files]]
    return lines


def _file_line(f: FilePlan) -> str:
    size = gb(f.size) if f.size is not None else "size unresolved"
    unpacked = f" -> {'~' if f.unpacked_estimated else ''}{gb(f.unpacked_bytes)} unpacked" if f.unpack and f.unpacked_bytes is not None else ""
    stage = f.stage if f.stage != "partial" else f"partial ({gb(f.partial_bytes)})"
    note = f"  (bucket: {f.bucket_status})" if f.bucket_status else ""
    if f.from_copy and f.stage not in ("linked", "extracted", "verified"):
        note += f"  <- unpacked copy {f.locations[0].url}: linked, no download, ~0 disk"
    elif f.not_in_copies and f.stage not in ("linked", "extracted", "verified"):
        note += "  (not in the unpacked copy: " + (f"from {f.locations[0].kind}" if f.locations else "no other source") + ")"
    return f"  {f.key:<22} {size:>10}{unpacked:<26} {stage}{note}"


def _disk_lines(disk: DiskPlan, cache: CachePlan | None) -> list[str]:
    lines = [
        "",
        f"disk         {disk.path}  (filesystem of {disk.probe})",
        f"  archives {gb(disk.archive_bytes)}, unpacked {'~' if disk.estimated else ''}{gb(disk.unpacked_bytes)}, "
        f"archives on disk at once {gb(disk.archives_in_flight_bytes)}",
        f"  peak {gb(disk.peak_bytes)}, after staging {gb(disk.final_bytes)} + reserve {gb(disk.reserve_bytes)}, margin {gb(disk.margin_bytes)}",
        *_reserve_lines(disk, cache),
        f"  needed {gb(disk.needed_bytes)}, free {gb(disk.free_bytes)}: {'fits' if disk.fits else 'DOES NOT FIT'}",
    ]
    if disk.estimated:
        lines.append("  (unpacked sizes marked ~ are estimates; `provision plan --probe` reads the exact figures)")
    if disk.unresolved:
        lines.append(f"  (sizes of {', '.join(disk.unresolved)} are unresolved until --probe or staging)")
    return lines


def _reserve_lines(disk: DiskPlan, cache: CachePlan | None) -> list[str]:
    """What the reserve is made of: the book's cache (per chapter, from one entry's measured bytes), which grows with
    the subsets staged, and any extra."""
    if not disk.cache_bytes:
        return []
    extra = disk.reserve_bytes - disk.cache_bytes
    at_once = cache.at_once if cache is not None else "one chapter at a time"
    return [f"  reserve: {gb(disk.cache_bytes)} for the book's cache ({gb(disk.cache_bytes // disk.subsets)} for each of "
            f"{disk.subsets} subsets: {at_once})" + (f" + {gb(extra)} data.reserve_gb" if extra else "")]


def status_text(status: StatusResult) -> str:
    lines = []
    for r in status.files:
        stage = r.stage + (f" ({r.percent}%)" if r.percent is not None else "")
        lines.append(f"{r.key:<24} {stage}" + (f"  from {r.source}" if r.source else ""))
    if status.caches:
        lines.append(f"the book's caches ({gb(sum(c.bytes for c in status.caches))} in all; a chapter's can go once you have moved on: "
                     "provision cache --drop N, or rm -r PATH):")
        for c in status.caches:
            entries = ""
            if c.entries_needed is not None and c.entries_built is not None:
                entries = (f"  {c.entries_built:,} of {'' if c.needed_exact else '~'}{c.entries_needed:,} entries built"
                           + (" (complete)" if c.entries_built >= c.entries_needed > 0 else ""))
            lines.append(f"  {c.name:<22} {gb(c.bytes):>9}  {c.path}{entries}")
    return "\n".join(lines)


def clean_text(plan: CleanPlan) -> str:
    """What clean removes (or removed): per file, its entries and bytes; what it leaves and why."""
    lines = []
    for key in dict.fromkeys([*plan.keys, *(r.key for r in plan.removals)]):
        mine = [r for r in plan.removals if r.key == key]
        links = sum(1 for r in mine if r.kind == "link")
        what = f"{len(mine) - links} files ({gb(sum(r.bytes for r in mine))})" + (f", {links} links (the files they lead to are kept)" if links else "")
        lines.append(f"{key:<24} {'removed' if plan.done else 'would remove'} {what}")
    lines += [f"  left alone: {reason}" for reason in plan.refused]
    if not plan.keys and not plan.removals:
        lines.append(f"nothing staged of subsets {plan.subsets} in {plan.target}")
    elif plan.done:
        lines.append(f"removed {gb(plan.bytes)} from {plan.target}" + (f"; {len(plan.folders_removed)} emptied folder(s) removed" if plan.folders_removed else "")
                     + "; the book's caches are kept (provision cache --drop N)")
    else:
        lines.append(f"would remove {gb(plan.bytes)} from {plan.target}; nothing else in it is touched")
    return "\n".join(lines)


def verify_text(result: VerifyResult) -> str:
    lines = []
    for r in result.files:
        problems = [f"missing: {n}" for n in r.missing] + [f"damaged: {n}" for n in r.damaged]
        lines.append(f"{r.key:<24} {r.stage}{'  OK' if r.ok else ''}")
        lines += [f"  {p}" for p in problems]
    lines.append("all good" if result.ok else "problems found: run `provision stage` to fetch what is missing and repair what is damaged")
    return "\n".join(lines)


def gpu_text(report: GpuReport, required: bool) -> str:
    probe = report.probe
    lines = [f"torch        {probe.get('torch') or 'not installed'}" + (f" (CUDA build {probe['cuda_build']})" if probe.get("cuda_build") else "")]
    smi = report.nvidia_smi
    if smi:
        lines.append(f"driver       {smi.get('driver_version')} (supports CUDA {smi.get('cuda_version')})")
    for d in probe.get("devices", []):
        lines.append(f"gpu {d['index']}        {d['name']}, {d['total_memory_bytes'] / 1e9:.1f} GB ({d['free_memory_bytes'] / 1e9:.1f} free), compute capability {d['compute_capability']}")
    smoke = probe.get("smoke")
    if smoke:
        lines.append(f"smoke test   {smoke['size']}x{smoke['size']} matmul {'matches' if smoke['matches_cpu'] else 'DIFFERS FROM'} the CPU; "
                     f"{smoke['fp32_tflops']:.1f} TFLOP/s fp32, {smoke['fp16_tflops']:.1f} fp16; host->GPU {smoke['h2d_gb_per_s']:.1f} GB/s")
    if "nccl_available" in probe:
        lines.append(f"nccl         {'available' if probe['nccl_available'] else 'NOT available'}")
    if not probe.get("devices") and not report.findings:
        lines.append("gpu          none")
    for f in report.findings:
        lines.append(f"{'problem' if f.fatal else 'note'}      {f.problem}")
        lines.append(f"  fix: {f.fix}")
    if not probe.get("devices") and not required:
        lines.append("CPU only: the profile does not require a GPU (training will be slow)")
    lines.append("ok" if report.ok else "NOT ok")
    return "\n".join(lines)


def install_dict(plan: InstallPlan) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(plan)


def install_text(plan: InstallPlan, done: bool = False) -> str:
    lines = []
    for r in plan.requirements:
        lines.append(f"{r.action:<10} {r.requirement:<28} {r.reason}")
    for cmd in plan.commands:
        lines.append(("ran: " if done else "would run: ") + shlex.join(cmd.argv))
    if not plan.commands:
        lines.append("nothing to install")
    return "\n".join(lines)


def stage_text(result: StageResult) -> str:
    lines = []
    hints: dict[str, None] = {}  # one hint per cause, not per file: a host that cannot be reached fails every file alike
    for f in result.files:
        line = f"{f.key:<24} {f.outcome}" + (f" from {f.source}" if f.source else "")
        if f.bytes_fetched:
            line += f", {gb(f.bytes_fetched)} fetched"
        lines.append(line)
        if f.checked != "md5" and f.outcome in ("staged", "repaired"):
            lines.append(f"  checked: {f.checked}" + ("" if "pins" in f.checked else "; `provision pin` records the data set's members"))
        for r in f.retries:
            lines.append(f"  retried: {r}")
        if f.error:
            lines.append(f"  error: {f.error}")
            if f.hint:
                hints[f.hint] = None
    lines += [f"hint: {hint}" for hint in hints]
    lines += source_lines(result.sources)
    lines.append(f"{'done' if result.ok else 'FAILED'} in {result.elapsed_s:.1f} s; data in {result.target_dir}")
    return "\n".join(lines)


def source_lines(sources: list[dict[str, Any]]) -> list[str]:
    """Per host: the transfers and connections at once, and when it throttled us, how often, why, and the time spent waiting."""
    lines = []
    for src in sources:
        # as counted at the sockets: transfers on a connection at once, and connections open at once (idle ones too)
        at_once = src.get("transfers_at_once", src["connections_used"])
        line = (f"source {src['host']}: {src['requests']} requests, at most {at_once} at once over {src['connections_used']} "
                f"connection(s) (cap {src['connections_cap']})")
        if src["throttle_events"]:
            why = ", ".join(f"{reason} x{n}" for reason, n in src["throttle_reasons"].items())
            line += (f"; throttled {src['throttle_events']} time(s) ({why}), down to {src['connections_now']} connection(s); "
                     f"{src['waited_s']:.0f} s spent waiting")
        lines.append(line)
        if src["throttle_events"]:
            lines.append("  hint: this host limits or blocks downloads; mirror the data once (provision mirror --to gs://BUCKET/luna16/) "
                         "and put that first in data.sources")
    return lines


def up_text(result: UpResult) -> str:
    lines = []
    for step in result.steps:
        if step == "data" and result.data is not None:
            lines.append(_data_summary(result.data))
        elif step == "book" and result.book is not None:
            lines.append(f"book       ok: {result.book.dir} at {(result.book.commit or '?')[:10]}, {len(result.book.changed_files)} file(s) fixed now")
        elif step == "cuda" and result.gpu is not None:
            lines.append(f"cuda       {cuda_line(result.gpu)}")
        elif step == "cache" and result.cache is not None:
            lines += [f"cache      ch{c.chapter}: {c.complete_before + c.built} of {c.series} series, {c.entries:,} entries built now"
                      + "".join(f"; FAILED {f['subset']}/{f['series']}: {f['error']}" for f in c.failed) for c in result.cache.chapters]
        else:
            lines.append(f"{step:<10} ok")
    return "\n".join(lines)


def cuda_line(report: GpuReport) -> str:
    """What the GPU check found, in one line: the devices and the matrix product, or that there is no GPU and why that is fine."""
    if not report.ok:
        return "FAILED"
    devices = report.probe.get("devices") or []
    if not devices:
        return "no GPU; not required by this profile (the book's code runs on the CPU, slowly)"
    names = ", ".join(f"{d['name']} ({d['total_memory_bytes'] / 1e9:.0f} GB)" for d in devices)
    smoke = report.probe.get("smoke") or {}
    checked = "; a matrix product on it matches the CPU" if smoke.get("matches_cpu") else ""
    return f"ok: torch {report.probe.get('torch')} sees {names}{checked}"


def _data_summary(result: StageResult) -> str:
    done = sum(1 for f in result.files if f.outcome in ("already staged", "staged", "linked", "repaired"))
    lines = [f"data       {'ok' if result.ok else 'FAILED'}: {done} of {len(result.files)} files staged in {result.target_dir}"]
    lines += [f"  {f.key}: {f.error}" for f in result.files if f.error]
    lines += [f"  hint: {hint}" for hint in dict.fromkeys(f.hint for f in result.files if f.error and f.hint)]
    return "\n".join(lines)


def pin_text(result: PinResult) -> str:
    lines = [f"{key:<24} {a.members} members, {gb(a.unpacked_bytes)} unpacked" for key, a in sorted(result.archives.items())]
    if not result.changed:
        lines.append(f"{result.path} already has these")
    else:
        lines.append(f"would write {result.path}" if result.dry_run else f"wrote {result.path} ({len(result.changed)} archive(s) changed)")
    return "\n".join(lines)


def mirror_text(result: MirrorResult) -> str:
    lines = []
    for item in result.items:
        line = f"{item.key:<24} {item.action:<9} {item.object}"
        if item.source:
            line += f"  (from {item.source}, {item.parts} part(s))"
        lines.append(line)
        if item.error:
            lines.append(f"  error: {item.error}")
    verb = "would copy" if result.dry_run else "copied"
    lines.append(f"{verb} {gb(result.bytes_to_upload)} to {result.destination}" + ("" if result.ok else "; some files FAILED"))
    return "\n".join(lines)


def vm_dict(plan: VmPlan) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(plan)


def vm_text(plan: VmPlan, dry_run: bool) -> str:
    lines = [
        f"boot disk    {plan.boot_disk_gb} GB ({plan.data_needed_gb:.0f} GB for the '{plan.profile}' profile's data, the rest for the system)",
        ("would run" if dry_run else "ran") + ":",
        "  " + " \\\n    ".join([shlex.join(plan.argv[:5]), *(shlex.quote(a) for a in plan.argv[5:])]),
        "startup script:",
        *("  " + line for line in plan.startup_script.splitlines()),
    ]
    return "\n".join(lines)
