"""The ``provision`` command: argument parsing and the one place that talks to the user.

Exit codes: 0 ok; 1 a step failed; 2 usage or config error; 3 refused by a preflight check.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError, ProvisionError
from .sources import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
STEPS = ("preflight", "install", "cuda", "book", "data", "cache")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"error: {message}\nhint: run '{self.prog} --help' for the options", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", metavar="PROFILE_OR_PATH", help="profile name (colab, vm, local, ci) or YAML path; default: detected")
    common.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. data.reserve_gb=20")
    common.add_argument("--subsets", help="which subsets to stage: all, 0-3, 0,2,5 (same as --set data.subsets=...)")
    common.add_argument("--root", help="data root folder (same as --set data.root=...)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (repeat for debug)")

    parser = _Parser(prog="provision", description="Get a machine ready for Deep Learning with PyTorch, Part 2: requirements, CUDA, LUNA16 data.")
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"dlwpt-provision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("plan", parents=[common], help="show what would be done (dry run; writes nothing)")
    p.add_argument("--probe", action="store_true", help="ask the sources for unresolved sizes, checksums and exact unpacked sizes")

    p = sub.add_parser("up", parents=[common], help="preflight, install, cuda, book, data, cache: everything, in order")
    p.add_argument("--skip", action="append", default=[], choices=STEPS, help="leave out a step (repeatable)")
    p.add_argument("--only", action="append", default=[], choices=STEPS, help="run only these steps (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan only (same as `provision plan`)")

    p = sub.add_parser("install", parents=[common], help="install the missing requirements")
    p.add_argument("--dry-run", action="store_true", help="print the exact commands only")

    sub.add_parser("check", parents=[common], help="probe the GPU and CUDA and judge them against the profile")

    p = sub.add_parser("stage", parents=[common], help="download, verify and unpack the data set")
    p.add_argument("--dry-run", action="store_true", help="print the data part of the plan only")

    p = sub.add_parser("verify", parents=[common], help="check staged files (sizes; --full re-checks contents)")
    p.add_argument("--full", action="store_true", help="re-read every unpacked member and compare its CRC")

    sub.add_parser("status", parents=[common], help="where each file of the data set stands, and the book's caches")

    p = sub.add_parser("book", parents=[common], help="get the book's code ready: clone at the pinned commit, apply the fixes; --smoke runs Part 2")
    p.add_argument("--undo", action="store_true", help="take the fixes back (the book's files as committed)")
    p.add_argument("--smoke", action="store_true", help="then run each Part 2 entry point for a few batches on the staged data")
    p.add_argument("--dry-run", action="store_true", help="show the book part of the plan only")

    p = sub.add_parser("cache", parents=[common], help="build the book's per-chapter caches for the staged scans, on every core (resumable)")
    p.add_argument("--chapters", type=_chapters, help="which chapters' caches: 11, 11,12, ... (default: book.cache, else 11)")
    p.add_argument("--drop", type=_chapters, metavar="CHAPTERS", help="delete these chapters' caches instead (when you have moved on)")
    p.add_argument("--workers", type=int, help="children building at once (default: book.cache_workers, else every core)")

    p = sub.add_parser("pin", parents=[common], help="write each archive's members (name, size, CRC-32) beside the manifest, from the sources")
    p.add_argument("--dry-run", action="store_true", help="read and show them; write nothing")

    p = sub.add_parser("vm", parents=[common], help="create a GCP GPU VM that provisions itself (gcloud)")
    p.add_argument("--dry-run", action="store_true", help="print the exact gcloud command and startup script")

    p = sub.add_parser("export", parents=[common], help="write a SkyPilot task that provisions every node (export skypilot)")
    p.add_argument("target", choices=["skypilot"], help="what to export")
    p.add_argument("-o", "--output", metavar="FILE", help="write the task here (default: stdout)")
    p.add_argument("--dry-run", action="store_true", help="print the task; write nothing (the default without -o)")
    p.add_argument("--accelerators", help="per node, NAME:COUNT (e.g. T4:1, A100:8)")
    p.add_argument("--nodes", type=int, help="number of nodes")
    p.add_argument("--cloud", help="gcp, aws, azure, lambda, ... (default: SkyPilot picks)")
    p.add_argument("--region", help="a region of that cloud")
    p.add_argument("--spot", action="store_true", default=None, help="use spot/preemptible instances")
    p.add_argument("--disk-size", type=int, help="disk per node in GB (refused when smaller than the data plan)")

    p = sub.add_parser("mirror", parents=[common], help="copy the selected files once into a bucket or a folder (Google Drive)")
    p.add_argument("--to", required=True, metavar="GS_URL_OR_DIR", help="destination: gs://my-bucket/luna16/ or /content/drive/MyDrive/luna16/")
    p.add_argument("--dry-run", action="store_true", help="show what would be copied and how many bytes")
    return parser


def _chapters(text: str) -> tuple[int, ...]:
    from .config import parse_chapters

    try:
        return parse_chapters(text, "--chapters")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (tests call this directly)."""
    environ = os.environ if environ is None else environ
    out = stdout or sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args, environ, out)
    except ProvisionError as exc:
        if args.json:
            from .report import to_json

            print(redact(to_json({"ok": False, **exc.to_dict()})), file=out)
        print(redact(f"error: {exc.message}"), file=sys.stderr)
        if exc.hint:
            print(redact(f"hint: {exc.hint}"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; what was fetched so far is kept, and the next run resumes", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug of ours: say what it was and what to do, never a traceback
        logging.getLogger("provision").debug("internal error", exc_info=True)
        print(redact(f"error: internal error in `provision {args.command}`: {type(exc).__name__}: {exc}"), file=sys.stderr)
        print("hint: this is a bug in provision, not in your set-up; what was staged so far is kept and a rerun resumes. "
              "Run the same command with -vv to see where it happened, and report it with that output", file=sys.stderr)
        return EXIT_FAILED


def _load(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Any, Any]:
    from . import environment
    from .config import load_config

    env = environment.current(environ)
    config = load_config(args.config, _sets(args), environ, default_profile=env.profile)
    return config, env


def _sets(args: argparse.Namespace) -> list[str]:
    """--set assignments, with --subsets and --root as the assignments they stand for."""
    sets = list(args.sets)
    if args.subsets is not None:
        sets.append(f"data.subsets={args.subsets}")
    if args.root is not None:
        sets.append(f"data.root={args.root}")
    return sets


def _dispatch(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> int:
    from . import report
    from .facts import build_plan

    config, env = _load(args, environ)
    command = args.command
    if command in ("plan",) or (command == "up" and args.dry_run):
        plan = build_plan(config, environ, env, probe=getattr(args, "probe", False))
        _show_plan(plan, args.json, out)
        return EXIT_OK if plan.feasible else max(p.exit_code for p in plan.problems)
    if command == "status":
        from .steps import status

        rows = status(config)
        _show(rows, report.status_text(rows), args.json, out)
        return EXIT_OK
    if command == "verify":
        from .steps import verify

        checked = verify(config, full=args.full)
        _show(checked, report.verify_text(checked), args.json, out)
        return EXIT_OK if checked["ok"] else EXIT_FAILED
    if command == "check":
        from .steps import check_gpu

        gpu_report = check_gpu(config, env)
        print(report.to_json(report.gpu_dict(gpu_report)) if args.json else report.gpu_text(gpu_report, config.cuda.required), file=out)
        return EXIT_OK if gpu_report.ok else EXIT_REFUSED
    if command == "export":
        from .export import ClusterOverrides, export_skypilot

        exported = export_skypilot(config, ClusterOverrides(args.accelerators, args.nodes, args.cloud, args.region, args.spot, args.disk_size),
                                   tuple(_sets(args)))
        for warning in exported.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.output and not args.dry_run:
            from .atomicfile import atomic_write_text

            atomic_write_text(Path(args.output), exported.yaml_text)
            print(f"wrote {args.output} (disk {exported.disk_gb} GB per node); launch with: sky launch -c dlwpt {args.output}", file=sys.stderr)
        else:
            print(report.to_json(exported.task) if args.json else exported.yaml_text, file=out, end="" if not args.json else "\n")
        return EXIT_OK
    if command == "book":
        return _book(args, config, env, environ, out)
    if command == "cache":
        from .steps import cache

        plan = build_plan(config, environ, env)
        built = cache(config, plan, env, args.chapters or config.book.cache or (11,), drop=args.drop or (), workers=args.workers)
        _show(built, report.cache_text(built), args.json, out)
        return EXIT_OK if built.get("ok", True) else EXIT_FAILED
    if command == "pin":
        from .steps import pin

        pinned = pin(config, dry_run=args.dry_run)
        _show(pinned, report.pin_text(pinned), args.json, out)
        return EXIT_OK
    if command == "vm":
        from .vm import create_vm

        vm_plan = create_vm(config, args.dry_run)
        _show(report.vm_dict(vm_plan), report.vm_text(vm_plan, args.dry_run), args.json, out)
        return EXIT_OK
    plan = build_plan(config, environ, env)
    if command == "install":
        if args.dry_run:
            _show(report.install_dict(plan.install), report.install_text(plan.install), args.json, out)
            return EXIT_OK
        from .steps import install

        install(plan, environ, config.requirements.venv)
        _show(report.install_dict(plan.install), report.install_text(plan.install, done=True), args.json, out)
        return EXIT_OK
    if command == "stage":
        if args.dry_run:
            _show_plan(plan, args.json, out)
            return EXIT_OK if plan.feasible else EXIT_REFUSED
        from .steps import preflight, stage

        preflight(plan, ("data",))
        result = stage(config, plan)
        _show(result.to_dict(), report.stage_text(result), args.json, out)
        return EXIT_OK if result.ok else EXIT_FAILED
    if command == "mirror":
        from .steps import mirror

        result = mirror(config, plan, args.to, dry_run=args.dry_run)
        _show(result.to_dict(), report.mirror_text(result), args.json, out)
        return EXIT_OK if result.ok else EXIT_FAILED
    if command == "up":
        from .steps import up

        steps = [s for s in STEPS if (not args.only or s in args.only) and s not in args.skip]
        summary = up(config, plan, env, environ, steps)
        _show(summary, report.up_text(summary), args.json, out)
        if "error" in summary:
            print(redact(f"error: {summary['error']['message']}"), file=sys.stderr)
            if summary["error"].get("hint"):
                print(redact(f"hint: {summary['error']['hint']}"), file=sys.stderr)
        return summary["exit_code"]
    raise AssertionError(command)  # argparse restricts the choices


def _book(args: argparse.Namespace, config: Any, env: Any, environ: Mapping[str, str], out: TextIO) -> int:
    from . import report
    from .facts import build_plan
    from .steps import book, smoke

    if args.undo and args.smoke:
        raise ConfigError("--undo and --smoke do not go together", hint="run the smoke test on the fixed code: provision book --smoke")
    plan = build_plan(config, environ, env)
    assert plan.book is not None
    if args.dry_run:
        _show(dataclasses.asdict(plan.book), report.book_plan_text(plan.book), args.json, out)
        return EXIT_OK
    result = book(config, plan, undo=args.undo)
    if not args.smoke:
        _show(result, report.book_text(result), args.json, out)
        return EXIT_OK
    print(report.book_text(result), file=sys.stderr)
    smoked = smoke(config, build_plan(config, environ, env), env)
    _show({**result, "smoke": smoked.to_dict()}, report.smoke_text(smoked), args.json, out)
    return EXIT_OK if smoked.ok else EXIT_FAILED


def _show_plan(plan: Any, as_json: bool, out: TextIO) -> None:
    from .report import plan_text

    _show(plan.to_dict(), plan_text(plan), as_json, out)


def _show(data: Any, text: str, as_json: bool, out: TextIO) -> None:
    """Print a result; user info in any URL is masked, whatever path it took to get here."""
    from .report import to_json

    print(redact(to_json(data) if as_json else text), file=out)


if __name__ == "__main__":
    raise SystemExit(main())
