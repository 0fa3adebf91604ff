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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import bookreport, environment, interrupt, report, steps
from .atomicfile import atomic_write_text
from .config import Config, load_config, parse_chapters, shipped_profiles
from .environment import Environment
from .errors import BookError, ConfigError, PathError, ProvisionError
from .facts import build_plan
from .planvalues import Plan
from .progress import Console
from .sources import redact
from .version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
STEPS = ("preflight", "install", "cuda", "book", "data", "cache")


class UsageError(ConfigError):
    """A command line argparse refused: shown like every other error, with the usage line as its hint."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"{self.format_usage().strip()}; run '{self.prog} --help' for the options")


def build_parser() -> argparse.ArgumentParser:
    """The command line: the options every command takes (before or after the command), then each command's own (its
    handler set as a default)."""
    parser = _Parser(prog="provision", description="Get a machine ready for Deep Learning with PyTorch, Part 2: requirements, CUDA, LUNA16 data.",
                     parents=[_common_options(before_command=True)])
    parser.add_argument("--version", action="version", version=f"dlwpt-provision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = _common_options(before_command=False)
    _add_setup_commands(sub, common)
    _add_book_and_cloud_commands(sub, common)
    for name, command in sub.choices.items():
        command.set_defaults(handler=HANDLERS[name])
    return parser


BEFORE = "before_command_"  # where the common options given before the command are kept until _merge_common


def _common_options(*, before_command: bool) -> argparse.ArgumentParser:
    """The options every command takes. Given after the command they leave no default behind (argparse would let a
    command's defaults overwrite what was given before it); _merge_common joins the two places."""
    common = _Parser(add_help=False)

    def add(*flags: str, dest: str, default: Any = None, **kwargs: Any) -> None:
        if kwargs.get("action") in (None, "append"):
            kwargs.setdefault("metavar", dest.upper())  # not the name it is kept under
        common.add_argument(*flags, dest=BEFORE + dest if before_command else dest,
                            default=default if before_command else argparse.SUPPRESS, **kwargs)

    add("-c", "--config", dest="config", metavar="PROFILE_OR_PATH", help=f"profile name ({', '.join(shipped_profiles())}) or YAML path; default: detected")
    add("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. data.reserve_gb=20")
    add("--subsets", dest="subsets", help="which subsets: all, fit (as many as the disk holds), 0-3, 0,2,5 (same as --set data.subsets=...)")
    add("--root", dest="root", help="data root folder (same as --set data.root=...)")
    add("--edition", dest="edition", help="the book's edition: 1 (dlwpt-code), 2 (dlwpt-code-2e) or auto (same as --set book.edition=...)")
    add("--json", dest="json", action="store_true", default=False, help="machine-readable output on stdout")
    add("-q", "--quiet", dest="quiet", action="store_true", default=False, help="print only errors and the final summary (no progress)")
    add("-v", "--verbose", dest="verbose", action="count", default=0, help="more log lines (repeat for debug)")
    return common


def _merge_common(args: argparse.Namespace) -> argparse.Namespace:
    """One value per common option: repeatable ones (--set, -v) add up, others given after the command win."""
    for name, before in list(vars(args).items()):
        if not name.startswith(BEFORE):
            continue
        dest = name[len(BEFORE):]
        delattr(args, name)
        if not hasattr(args, dest):
            setattr(args, dest, before)
        elif isinstance(before, (list, int)) and not isinstance(before, bool):
            setattr(args, dest, before + getattr(args, dest))
    return args


def _add_setup_commands(sub: Any, common: argparse.ArgumentParser) -> None:
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
    p.add_argument("--dry-run", action="store_true", help="print the data part of the plan only (files, sources, disk); writes nothing")

    p = sub.add_parser("verify", parents=[common], help="check staged files (sizes; --full re-checks contents)")
    p.add_argument("--full", action="store_true", help="re-read every unpacked member and compare its CRC")

    sub.add_parser("status", parents=[common], help="where each file of the data set stands, and the book's caches")

    p = sub.add_parser("clean", parents=[common], help="remove the staged data of --subsets (0-1, all): only what staging recorded")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; remove nothing")
    p.add_argument("-y", "--yes", action="store_true", help="remove without asking")

    p = sub.add_parser("mirror", parents=[common], help="copy the selected files once into a bucket or a folder (Google Drive)")
    p.add_argument("--to", required=True, metavar="GS_URL_OR_DIR", help="destination: gs://my-bucket/luna16/ or /content/drive/MyDrive/luna16/")
    p.add_argument("--dry-run", action="store_true", help="show what would be copied and how many bytes")

    p = sub.add_parser("pin", parents=[common], help="write each archive's members (name, size, CRC-32) beside the manifest, from the sources")
    p.add_argument("--dry-run", action="store_true", help="read and show them; write nothing")


def _add_book_and_cloud_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("book", parents=[common], help="get the book's code ready: clone at the pinned commit, apply the fixes; --smoke runs Part 2")
    p.add_argument("--undo", action="store_true", help="take the fixes back (the book's files as committed)")
    p.add_argument("--smoke", action="store_true", help="then run each Part 2 entry point for a few batches on the staged data")
    p.add_argument("--dry-run", action="store_true", help="show the book part of the plan only")

    p = sub.add_parser("cache", parents=[common], help="build the book's per-chapter caches for the staged scans, on every core (resumable)")
    p.add_argument("--chapters", type=_chapters, help="which chapters' caches: 11, 11,12, ... (default: book.cache, else the edition's first: 11, or 13 in the second)")
    p.add_argument("--drop", type=_chapters, metavar="CHAPTERS", help="delete these chapters' caches instead (when you have moved on)")
    p.add_argument("--workers", type=int, help="children building at once (default: book.cache_workers, else every core)")

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


def _chapters(text: str) -> tuple[int, ...]:
    try:
        return parse_chapters(text, "--chapters")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class Ctx:
    """What every command handler is given: its arguments, the profile, the machine, the environment variables."""

    args: argparse.Namespace
    config: Config
    env: Environment
    environ: Mapping[str, str]
    console: Console  # where progress goes (nothing under --quiet)


@dataclass(frozen=True)
class Outcome:
    """What a handler hands back to the one place that prints: the value (for --json), its text, the exit code, and
    an error to show besides (a step of `up` that failed after others were done)."""

    data: Any
    text: str
    code: int = 0
    error: ProvisionError | None = None
    quiet: bool = False  # nothing for stdout (export -o wrote its file)


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (tests call this directly). The one place that talks to the user."""
    environ = os.environ if environ is None else environ
    out = stdout or sys.stdout
    as_json = False
    command = "?"
    try:
        args = _merge_common(build_parser().parse_args(argv))
        as_json, command = args.json, args.command
        level = logging.ERROR if args.quiet and not args.verbose else logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        config, env = _load(args, environ)
        console = Console(quiet=args.quiet)
        for warning in () if args.quiet else env.warnings:
            print(redact(f"warning: {warning}"), file=sys.stderr)
        outcome: Outcome = args.handler(Ctx(args, config, env, environ, console))
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except ProvisionError as exc:
        return _failed(exc, as_json, out)
    except KeyboardInterrupt as exc:  # Ctrl-C, or TERM (a Terminated) when run as the `provision` process
        print(interrupt.INTERRUPTED, file=sys.stderr)
        return interrupt.exit_code(exc)
    except OSError as exc:
        if exc.filename is None:
            return _internal_error(command, exc)
        return _failed(PathError.of(exc), as_json, out)  # a path the input named cannot be used: the user's to fix, not a bug
    except Exception as exc:  # noqa: BLE001 - a bug of ours
        return _internal_error(command, exc)
    if not outcome.quiet:
        print(redact(report.to_json(outcome.data) if as_json else outcome.text), file=out)
    if outcome.error is not None:
        _say_error(outcome.error)
    return outcome.code


def _failed(exc: ProvisionError, as_json: bool, out: TextIO) -> int:
    if as_json:
        print(redact(report.to_json({"ok": False, **exc.to_dict()})), file=out)
    _say_error(exc)
    return exc.exit_code


def _internal_error(command: str, exc: Exception) -> int:
    """A bug of ours: say what it was and what to do, never a traceback."""
    logging.getLogger("provision").debug("internal error", exc_info=True)
    _say_error(ProvisionError(f"internal error in `provision {command}`: {type(exc).__name__}: {exc}",
                              hint="this is a bug in provision, not in your set-up; what was staged so far is kept and a rerun "
                                   "resumes. Run the same command with -vv to see where it happened, and report it with that output"))
    return EXIT_FAILED


def _say_error(exc: ProvisionError) -> None:
    """``error:`` and ``hint:`` on stderr; user info in URLs and control characters masked."""
    print(redact(f"error: {exc.message}"), file=sys.stderr)
    if exc.hint:
        print(redact(f"hint: {exc.hint}"), file=sys.stderr)


def _load(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Config, Environment]:
    env = environment.current(environ)
    return load_config(args.config, _sets(args), environ, default_profile=env.profile), env


def _sets(args: argparse.Namespace) -> list[str]:
    """--set assignments, with --subsets and --root as the assignments they stand for."""
    sets = list(args.sets)
    if args.subsets is not None:
        sets.append(f"data.subsets={args.subsets}")
    if args.root is not None:
        sets.append(f"data.root={args.root}")
    if args.edition is not None:
        sets.append(f"book.edition={args.edition}")
    return sets


def _plan_of(ctx: Ctx, probe: bool = False) -> Plan:
    return build_plan(ctx.config, ctx.environ, ctx.env, probe=probe)


def _say_left_out(plan: Plan, console: Console) -> None:
    """Before a byte is written: the subsets that ``data.subsets: fit`` leaves out on this disk, and how to get them."""
    if plan.data.subsets_left_out:
        console.say(f"note: {plan.data.subsets_left_out}")


def _plan_outcome(plan: Plan, code: int | None = None) -> Outcome:
    return Outcome(plan.to_dict(), report.plan_text(plan), code if code is not None else (
        EXIT_OK if plan.feasible else max(p.exit_code for p in plan.problems)))


# ---------------------------------------------------------------- one handler per command


def cmd_plan(ctx: Ctx) -> Outcome:
    return _plan_outcome(_plan_of(ctx, probe=ctx.args.probe))


def cmd_up(ctx: Ctx) -> Outcome:
    if ctx.args.dry_run:
        return _plan_outcome(_plan_of(ctx))
    selected = [s for s in STEPS if (not ctx.args.only or s in ctx.args.only) and s not in ctx.args.skip]
    plan = _plan_of(ctx)
    if "data" in selected:
        _say_left_out(plan, ctx.console)
    result = steps.up(ctx.config, plan, ctx.env, ctx.environ, selected, ctx.console)
    return Outcome(result.to_dict(), report.up_text(result), result.exit_code, result.error)


def cmd_install(ctx: Ctx) -> Outcome:
    plan = _plan_of(ctx)
    if not ctx.args.dry_run:
        steps.install(plan, ctx.environ, ctx.console)
    return Outcome(report.install_dict(plan.install), report.install_text(plan.install, done=not ctx.args.dry_run))


def cmd_check(ctx: Ctx) -> Outcome:
    gpu_report = steps.check_gpu(ctx.config, ctx.env)
    return Outcome(gpu_report.to_dict(), report.gpu_text(gpu_report, ctx.config.cuda.required), EXIT_OK if gpu_report.ok else EXIT_REFUSED)


def cmd_stage(ctx: Ctx) -> Outcome:
    plan = _plan_of(ctx)
    if ctx.args.dry_run:  # the data part of the plan, judged as staging would judge it
        problems = [p for p in plan.problems if p.step in ("data", "preflight")]
        return Outcome(report.stage_plan_dict(plan, problems), report.stage_plan_text(plan, problems),
                       max(p.exit_code for p in problems) if problems else EXIT_OK)
    _say_left_out(plan, ctx.console)
    steps.preflight(plan, ("data",))
    result = steps.stage(ctx.config, plan, console=ctx.console)
    return Outcome(result.to_dict(), report.stage_text(result), EXIT_OK if result.ok else EXIT_FAILED)


def cmd_verify(ctx: Ctx) -> Outcome:
    checked = steps.verify(ctx.config, full=ctx.args.full)
    return Outcome(checked.to_dict(), report.verify_text(checked), EXIT_OK if checked.ok else EXIT_FAILED)


def cmd_status(ctx: Ctx) -> Outcome:
    found = steps.status(ctx.config)
    return Outcome(found.to_dict(), report.status_text(found))


def cmd_book(ctx: Ctx) -> Outcome:
    args = ctx.args
    if args.undo and args.smoke:
        raise ConfigError("--undo and --smoke do not go together", hint="run the smoke test on the fixed code: provision book --smoke")
    plan = _plan_of(ctx)
    if plan.book is None:
        raise BookError("the book's step has no plan", hint="check book.fixes in the profile")
    if args.dry_run:
        return Outcome(dataclasses.asdict(plan.book), bookreport.book_plan_text(plan.book))
    result = steps.book(ctx.config, plan, undo=args.undo)
    if not args.smoke:
        return Outcome(result.to_dict(), bookreport.book_text(result))
    ctx.console.say(bookreport.book_text(result))
    smoked = steps.smoke(ctx.config, _plan_of(ctx), ctx.env, ctx.console)
    return Outcome({**result.to_dict(), "smoke": smoked.to_dict()}, bookreport.smoke_text(smoked), EXIT_OK if smoked.ok else EXIT_FAILED)


def cmd_cache(ctx: Ctx) -> Outcome:
    args = ctx.args
    built = steps.cache(ctx.config, _plan_of(ctx), ctx.env, args.chapters or ctx.config.book.cache or (), drop=args.drop or (),
                        workers=args.workers, console=ctx.console)
    return Outcome(built.to_dict(), bookreport.cache_text(built), EXIT_OK if built.ok else EXIT_FAILED)


def cmd_pin(ctx: Ctx) -> Outcome:
    pinned = steps.pin(ctx.config, dry_run=ctx.args.dry_run)
    return Outcome(pinned.to_dict(), report.pin_text(pinned))


def cmd_vm(ctx: Ctx) -> Outcome:
    from .vm import create_vm  # gcloud's world: only for this command

    vm_plan = create_vm(ctx.config, ctx.args.dry_run)
    return Outcome(report.vm_dict(vm_plan), report.vm_text(vm_plan, ctx.args.dry_run))


def cmd_export(ctx: Ctx) -> Outcome:
    from .export import ClusterOverrides, export_skypilot  # SkyPilot's world: only for this command

    args = ctx.args
    exported = export_skypilot(ctx.config, ClusterOverrides(args.accelerators, args.nodes, args.cloud, args.region, args.spot, args.disk_size),
                               tuple(_sets(args)))
    for warning in exported.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.output and not args.dry_run:
        atomic_write_text(Path(args.output), exported.yaml_text)
        print(f"wrote {args.output} (disk {exported.disk_gb} GB per node); launch with: sky launch -c dlwpt {args.output}", file=sys.stderr)
        return Outcome(exported.task, "", quiet=True)
    return Outcome(exported.task, exported.yaml_text.rstrip("\n"))


def cmd_clean(ctx: Ctx) -> Outcome:
    from .clean import carry_out, plan_clean
    from .config import configs_dir
    from .disk import gb
    from .manifest import load_manifest

    root = Path(ctx.config.data.root)
    plan = plan_clean(root, load_manifest(ctx.config.data.dataset, configs_dir()), ctx.args.subsets)
    if ctx.args.dry_run or not plan.removals and not plan.keys:
        return Outcome(plan.to_dict(), report.clean_text(plan))
    if not ctx.args.yes:
        if ctx.args.json or not sys.stdin.isatty():
            raise ConfigError(f"clean would remove {len(plan.removals)} entries ({gb(plan.bytes)}) of subsets {plan.subsets} and asks first",
                              hint="see them with --dry-run, then run it again with --yes")
        print(report.clean_text(plan), file=sys.stderr)
        if input("remove these? [y/N] ").strip().lower() not in ("y", "yes"):
            return Outcome(plan.to_dict(), "nothing removed", EXIT_FAILED)
    done = carry_out(plan, root)
    return Outcome(done.to_dict(), report.clean_text(done))


def cmd_mirror(ctx: Ctx) -> Outcome:
    plan = _plan_of(ctx)
    _say_left_out(plan, ctx.console)  # under fit, the subsets chosen are those this machine's disk holds: said, not silent
    result = steps.mirror(ctx.config, plan, ctx.args.to, dry_run=ctx.args.dry_run, console=ctx.console)
    return Outcome(result.to_dict(), report.mirror_text(result), EXIT_OK if result.ok else EXIT_FAILED)


HANDLERS = {"plan": cmd_plan, "up": cmd_up, "install": cmd_install, "check": cmd_check, "stage": cmd_stage, "verify": cmd_verify,
            "status": cmd_status, "clean": cmd_clean, "book": cmd_book, "cache": cmd_cache, "pin": cmd_pin, "vm": cmd_vm, "export": cmd_export,
            "mirror": cmd_mirror}


if __name__ == "__main__":
    raise SystemExit(main())
