"""The ``medscreen`` command: the desktop window with no arguments, headless screening with them.

``medscreen classify PATH... --out DIR`` screens files and folders with the same engine the
window uses, prints a progress bar and a summary, and writes ``results.csv`` and
``results.json`` (and a PDF report on request). It exits 0 when the batch ran to the end,
even if some files could not be read (each has its reason in the results), 1 when the batch
itself could not run or its results could not be written (a full disk, a damaged or
read-only results store: a message says which, never a traceback), and 130 when
interrupted by Ctrl-C (143 by SIGTERM, 129 by SIGHUP): what was finished is kept, the reports
of it are written and say the batch is incomplete, and ``medscreen resume`` continues it.
``medscreen export BATCH --out DIR`` writes the results of any stored batch again.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from desktop import DISCLAIMER, __version__
from desktop.app_logging import configure_logging
from desktop.engine.devices import choose_device
from desktop.engine.errors import BatchError, MedScreenError
from desktop.engine.paths import default_db_path, display_path, one_line
from desktop.engine.patients import PatientChoice, adult_age_of, describe_ages, parse_group
from desktop.engine.registry import (
    ModelSet,
    ModelSetPlan,
    default_model_dirs,
    load_model_set,
    plan_model_set,
    summarize,
)
from desktop.engine.results import BatchCounts, ScanResult, ThresholdChoice
from desktop.engine.runner import BatchRunner, BatchSummary, Progress
from desktop.engine.store import (
    BatchKind,
    BatchStatus,
    ResultsStore,
    StoreError,
    disk_full_message,
)
from desktop.engine.vocabulary import counted, duration
from desktop.launch import open_window, window_files

_T = TypeVar("_T")

if TYPE_CHECKING:
    from desktop.engine.reports import ReportContext

log = logging.getLogger("medscreen.cli")

#: How many batches 'medscreen history' lists without --all (the latest).
HISTORY_SHOWN = 200
#: How many paths given that do not exist the summary names (the rest are counted).
_MISSING_NAMED = 5
#: The fewest characters of a batch id that ``export`` and ``resume`` take as its start.
MIN_ID_PREFIX = 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medscreen",
        description="Offline chest X-ray screening for tuberculosis and pneumonia. "
        "With no command, opens the desktop window. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"MedScreen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device",
            choices=("auto", "cpu", "cuda"),
            default=None,
            help="where inference runs (default: $MEDSCREEN_DEVICE or auto)",
        )
        p.add_argument(
            "--db", type=Path, default=None, help=f"results store (default: {default_db_path()})"
        )
        p.add_argument(
            "--models",
            type=Path,
            action="append",
            default=None,
            metavar="DIR",
            help="model folder (repeatable; default: bundled + user models)",
        )

    def outputs(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--out",
            type=Path,
            required=True,
            metavar="DIR",
            help="folder for results.csv, results.json and the reports",
        )
        p.add_argument(
            "--name",
            type=_report_name,
            default=None,
            metavar="NAME",
            help="file name of the reports, without extension (default: "
            "medscreen-<clinic>-<date>-<batch>, the name the window proposes)",
        )
        p.add_argument(
            "--operating-point",
            default=None,
            metavar="NAME|THRESHOLD",
            help="'screening' (default), 'balanced', a saved site point 'site:NAME' "
            "(see 'medscreen site list'), a threshold from 0 to 1, or one per model: "
            "'tb=balanced,pneumonia=0.6'; a programme's policy file may set or lock it",
        )
        p.add_argument(
            "--report",
            default="",
            metavar="FORMATS",
            help="also write the reports NAME.<fmt> for each of pdf,csv,json "
            "(comma-separated; see --name)",
        )
        p.add_argument(
            "--patients",
            choices=("adult", "child", "auto"),
            default=None,
            help="the patients' group for the whole batch; 'auto' (the default for a new "
            "batch) takes it from each file's DICOM age, else estimates it from the image. "
            "A model outside its scope (e.g. an adults-only model on a child) shows its score "
            "but raises no flag. Stored with the batch (export and resume keep it)",
        )
        p.add_argument("--clinic", default="", help="clinic name printed on reports")
        p.add_argument("--operator", default="", help="operator name printed on reports")
        p.add_argument(
            "--include-identifiers",
            action="store_true",
            help="include DICOM patient name/ID in reports (off by default)",
        )
        add_run_options(p)

    classify = sub.add_parser("classify", help="screen files and folders headless")
    classify.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="scans and folders of scans (folders are searched with their sub-folders)",
    )
    common(classify)
    outputs(classify)

    resume = sub.add_parser("resume", help="continue an interrupted batch")
    resume.add_argument(
        "batch",
        nargs="?",
        default=None,
        help="batch id, or its start (default: the latest interrupted one)",
    )
    common(resume)
    outputs(resume)

    export = sub.add_parser(
        "export", help="write the results and reports of a stored batch again (any batch)"
    )
    export.add_argument(
        "batch",
        help="batch id, as 'medscreen history' lists it, or its start (a report's file name "
        "carries the first eight characters)",
    )
    common(export)
    outputs(export)
    _unlisted(export, "--device", "--workers", "--quiet")  # export screens nothing

    history = sub.add_parser("history", help="list past batches")
    history.add_argument(
        "--db", type=Path, default=None, help=f"results store (default: {default_db_path()})"
    )
    history.add_argument(
        "--all",
        action="store_true",
        help=f"every batch (without it: the latest {HISTORY_SHOWN}, and a line if there are more)",
    )
    history.add_argument(
        "--kind",
        choices=("all", "screening", "calibration"),
        default="all",
        help="only screening batches, or only site-calibration runs (labelled scans); "
        "every batch is marked with its kind",
    )

    models = sub.add_parser("models", help="list the models, their versions and the device")
    common(models)

    from desktop.cli_calibrate import add_commands as add_calibration_commands

    add_calibration_commands(sub, common)  # calibrate, site

    gui = sub.add_parser(
        "gui",
        help="open the desktop window (the default); 'medscreen FILE...' opens it with "
        "those scans or folders queued for screening",
    )
    gui.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="scans or folders")
    return parser


def _unlisted(p: argparse.ArgumentParser, *options: str) -> None:
    """Leave ``options`` out of ``p``'s help, still accepted: export shares the options of
    the commands that screen, and its help listed "--workers: decoder threads" and a device
    for inference it never runs (scripts that pass them keep working)."""
    for action in p._actions:
        if any(option in action.option_strings for option in options):
            action.help = argparse.SUPPRESS


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of every command that screens a batch (classify, resume, export, calibrate)."""
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="decoder threads (default: one per available core)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # the window's arguments are desktop.launch's to judge (one definition: the medscreen
    # command starts there, and only comes here for the command line)
    files = window_files(args_list)
    if files is not None:  # "medscreen FILE..." (a file manager's "Open with", Exec=medscreen %F)
        return open_window(files)
    args = parser.parse_args(args_list)
    if args.command in (None, "gui"):
        return open_window(list(getattr(args, "paths", None) or []))
    configure_logging(verbose=args.verbose)
    try:
        code = _command(args)
        sys.stdout.flush()  # here, not at exit, so a reader gone is handled below
        return code
    except BrokenPipeError:
        # 'medscreen history | head': the reader has what it wanted. Say nothing, as other
        # tools do (it was "medscreen: error: Broken pipe (EPIPE)", or Python's "Exception
        # ignored" at exit), and keep the interpreter's final flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a program ended by it
    except MedScreenError as exc:
        print(f"medscreen: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an I/O failure no step above explained: still no traceback
        log.debug("I/O failure", exc_info=True)
        print(f"medscreen: error: {_os_reason(exc)}", file=sys.stderr)
        return 1


def _command(args: argparse.Namespace) -> int:
    """Run the headless command ``args`` names; its exit status."""
    if args.command == "history":
        return _history(args)
    if args.command == "models":
        return _models(args)
    if args.command in ("calibrate", "site"):
        from desktop.cli_calibrate import run as run_calibration_command

        return run_calibration_command(args)
    if args.command == "export":
        try:
            return _export(args)
        except StoreError as exc:
            raise _with_store_remedy(exc, args, args.batch, "export") from exc
    return _classify(args)


def _check_named_models(
    choice: ThresholdChoice, models: ModelSet | ModelSetPlan, given: str | None
) -> None:
    """A per-model operating point must name finding models that are loaded: a typo
    ('pneumoina=0.6') left that model at its default, silently, while the user believed it
    set. Refused when the command line gave it; only a warning for a policy file's (a
    programme's typo must not stop a clinic's screening)."""
    unknown = [mid for mid in choice.per_model if mid not in models.findings]
    if not unknown:
        return
    text = (
        f"the operating point names {', '.join(unknown)}, which is not a finding model here "
        f"(the models are {', '.join(models.findings)})"
    )
    if given is not None:
        raise BatchError(text)
    print(f"medscreen: warning: {text}; the policy file's point for it is ignored", file=sys.stderr)


def _policy_point(requested: str | None) -> str | None:
    """The operating point to use under the programme's policy file (``policy.py``).

    Without a policy: what was asked. A policy's point is the default; a locked policy
    refuses any other, naming the file, so the command line cannot bypass the lock.
    """
    from desktop.engine.policy import PolicyError, load_policy
    from desktop.engine.results import ThresholdChoice as Choice

    try:
        policy = load_policy()
    except PolicyError as exc:  # fail closed: the lock it may hold is unknown
        raise BatchError(
            f"{exc}. The thresholds stay locked: nothing is screened or exported until it "
            "can be read (what it sets is unknown); ask your programme's administrator"
        ) from exc
    if policy.source is None or policy.operating_point is None:
        return requested
    if requested is None:
        return policy.operating_point
    if (
        policy.locked
        and Choice.parse(requested).text() != Choice.parse(policy.operating_point).text()
    ):
        raise BatchError(
            f"the operating point is locked to {policy.operating_point!r} by the policy file "
            f"{policy.source}; ask your programme's administrator to change it"
        )
    return requested


def _store(args: argparse.Namespace) -> ResultsStore:
    return ResultsStore(args.db or default_db_path())


def _store_path(args: argparse.Namespace) -> Path:
    return Path(args.db or default_db_path())


def _existing_store(args: argparse.Namespace) -> ResultsStore:
    """The results store a command that screens nothing new names (export, resume): never
    created. A mistyped ``--db`` made an empty store there and then answered "no batch"."""
    path = _store_path(args)
    if not path.exists():
        raise BatchError(
            f"there is no results store {path}: nothing has been screened with it "
            "(check --db; 'medscreen history' lists the batches of a store)"
        )
    return ResultsStore(path)


def _batch_id(store: ResultsStore, given: str) -> str:
    """The id of the stored batch ``given`` names: its whole id, or the start of one id
    (at least :data:`MIN_ID_PREFIX` characters). Report files carry the first eight
    (medscreen-2026-12-02-9da795e3.pdf), and that was 'no batch'."""
    if store.batch(given) is not None:
        return given
    matches = store.batch_ids_starting(given) if len(given) >= MIN_ID_PREFIX else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise BatchError(
            f"{given!r} is the start of {len(matches)} batch ids ({', '.join(matches[:5])}"
            f"{', …' if len(matches) > 5 else ''}): give more of the id"
        )
    raise BatchError(
        f"no batch {given!r} in the results store {store.path} "
        "('medscreen history' lists the batches)"
    )


def _load_models(args: argparse.Namespace) -> ModelSet:
    device = choose_device(args.device)
    return load_model_set(args.models or default_model_dirs(), device)


def _history(args: argparse.Namespace) -> int:
    path = _store_path(args)
    if not path.exists():  # a mistyped --db printed nothing and left an empty store there
        print(f"no batches: there is no results store {path} (nothing screened with it)")
        return 0
    store = ResultsStore(path)
    shown = 0
    # A batch whose process died (crash, kill, power cut) is still marked running in the
    # store: say what 'medscreen resume' (no id) will pick up, not "running".
    dead = {info.id for info in store.interrupted_batches()}
    listed = store.batches(limit=-1 if args.all else HISTORY_SHOWN + 1)  # -1: SQLite's "all"
    older = len(listed) > HISTORY_SHOWN and not args.all
    for info in listed[:HISTORY_SHOWN] if older else listed:
        if args.kind not in ("all", info.kind):
            continue
        total = info.total if info.total is not None else "?"
        status = "interrupted" if info.id in dead else info.status
        print(
            f"{info.id}  {info.kind:<11}  {status:<11}  {info.done}/{total} done, "
            f"{counted(info.errors, 'error')}  {info.label}"
        )
        shown += 1
    if not shown and not older:  # an empty answer read as a fault
        kind = "" if args.kind == "all" else f"{args.kind} "
        print(f"no {kind}batches in the results store {path}")
    if older:  # the list stopped at the latest HISTORY_SHOWN, silently
        print(
            f"(the latest {HISTORY_SHOWN} batches; older ones are kept: "
            "'medscreen history --all' lists every one)"
        )
    return 0


def _models(args: argparse.Namespace) -> int:
    models = _load_models(args)
    print(f"device: {models.device.describe()}")
    for manifest, line in zip(models.manifests.values(), summarize(models.manifests), strict=True):
        print(line)
        for point in manifest.operating_points.values():
            print(f"    {point.describe()}")
        if manifest.scope is not None and manifest.scope.restricts:
            ages = describe_ages(manifest.scope, adult_age_of(models.manifests)) or "any age"
            views = "/".join(manifest.scope.views) or "any view"
            print(f"    scope: {ages}; {views}. {manifest.scope.summary}".rstrip())
    for problem in models.problems:
        print(f"warning: {problem}")
    from desktop.cli_calibrate import site_point_lines

    sites = site_point_lines(models.manifests)
    if sites:
        print("site operating points (use as --operating-point site:NAME):")
        print("\n".join(f"  {line}" for line in sites))
    return 0


def check_writable(folder: Path) -> None:
    """Fail before screening, not after, when results could not be written."""
    if folder.exists() and not folder.is_dir():  # mkdir would say "File exists"
        raise BatchError(
            f"the output folder {display_path(os.fspath(folder))} is a file, not a folder; "
            "choose another with --out"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medscreen-write-test-"):
            pass
    except OSError as exc:
        raise BatchError(
            f"the output folder {folder} is not writable ({exc.strerror or exc}); "
            "choose another with --out"
        ) from exc


def _classify(args: argparse.Namespace) -> int:
    from desktop.engine.reports import ReportContext, StoredBatch, parse_formats

    out: Path = args.out
    try:
        formats = parse_formats([args.report])  # the engine's one parser, before any work
    except ValueError as exc:
        raise BatchError(str(exc)) from exc
    try:
        choice = ThresholdChoice.parse(_policy_point(args.operating_point))
    except ValueError as exc:
        raise BatchError(str(exc)) from exc
    check_writable(out)
    store = _existing_store(args) if args.command == "resume" else _store(args)
    if args.command == "resume" and args.batch is not None:  # before the models load
        args.batch = _batch_id(store, args.batch)
        done = store.batch(args.batch)
        if done is not None and done.status == BatchStatus.COMPLETED:  # it said nothing
            print(
                f"medscreen: note: batch {args.batch} had already completed: nothing is left "
                "to screen; its results are written again (as 'medscreen export' does)",
                file=sys.stderr,
            )
    models = _load_models(args)
    _check_named_models(choice, models, args.operating_point)
    for manifest in models.manifests.values():
        if manifest.role == "finding":
            point = choice.resolve(manifest)  # an unknown operating point fails now, not at the end
            if choice.site is not None and point.name != choice.name:
                print(
                    f"medscreen: note: {choice.name} holds no calibration of {manifest.id}; "
                    f"its default point {point.name} is used",
                    file=sys.stderr,
                )
    for problem in models.problems:
        print(f"medscreen: warning: {problem}", file=sys.stderr)

    resume_id: str | None = None
    if args.command == "resume":
        resume_id = args.batch
        if resume_id is None:
            interrupted = store.interrupted_batches(BatchKind.SCREENING)
            if not interrupted:
                raise BatchError(
                    "there is no interrupted batch to resume (a batch stopped with Ctrl-C is "
                    "continued by its id: 'medscreen resume BATCH --out DIR'); to write a "
                    "finished batch's results again, use 'medscreen export BATCH --out DIR' "
                    "('medscreen history' lists the batches)"
                )
            resume_id = interrupted[0].id

    runner = BatchRunner(models, store, workers=args.workers)
    stream = sys.stderr
    bar = _ProgressBar(stream, enabled=not args.quiet)
    print(f"MedScreen {__version__} — device: {models.device.describe()}", file=stream)
    generator = runner.run(args.paths if args.command == "classify" else (), resume=resume_id)
    running_id = resume_id  # the batch *this* run works on, never another one's

    def note(event: Progress) -> None:
        nonlocal running_id
        running_id = event.batch_id

    stopped_by: list[int] = []
    try:
        summary = drive(generator, runner, bar, note, stopped_by=stopped_by)
    except StoreError as exc:
        raise _with_store_remedy(exc, args, running_id) from exc
    interrupted = summary is None
    stopped = stopped_status(stopped_by)

    batch_id = summary.batch_id if summary else running_id
    if batch_id is None:  # stopped while the folders were still being listed
        print("interrupted before any scan started: nothing to keep", file=stream)
        return stopped
    if args.operator:  # the history says who ran each batch
        store.set_batch_operator(batch_id, args.operator)
    ctx = ReportContext.for_batch(
        batch_id,
        models,
        choice,
        clinic_name=args.clinic,
        operator=args.operator,
        include_identifiers=args.include_identifiers,
        patients=_patients(args, store, batch_id),
        decisions=store.decisions(),
        typed_patient_ids=store.typed_patient_ids() if args.include_identifiers else None,
        files_not_screened=(not_screened := store.files_not_screened(batch_id)),
        resume_command=_resume_command(args, batch_id) if not_screened else "",
        same_content_copies=store.same_content_copies(batch_id),
    )
    results = StoredBatch(store, batch_id)  # streamed per pass, thumbnails fetched one by one
    written = _write_outputs(results, ctx, out, formats, args.name, args)
    _print_summary(summary, results, ctx, written, stream)
    if summary is not None and summary.total == 0:
        _warn_no_scans(getattr(args, "paths", None) or (), summary, stream)
    if interrupted:
        print(
            f"interrupted: finished scans are kept; {ctx.files_not_screened} not screened yet; "
            f"continue with: {_resume_command(args, batch_id)}",
            file=stream,
        )
        return stopped
    return 0


def _warn_no_scans(paths: Sequence[Path], summary: BatchSummary, stream: TextIO) -> None:
    """A batch of no scan (an empty USB mount point, a folder of notes) ran to its end and
    wrote empty reports; say so, as the window does, rather than only "0 files"."""
    where = "; ".join(display_path(os.fsdecode(p)) for p in paths) or "the batch"
    skipped = summary.discovered.skipped_non_scans
    extra = f"; {counted(skipped, 'non-scan file')} skipped" if skipped else ""
    print(
        f"medscreen: warning: no scans found to screen in {where} "
        f"(PNG, JPEG, TIFF, BMP, DICOM){extra}",
        file=stream,
    )


@contextmanager
def _stop_like_ctrl_c(received: list[int]) -> Iterator[None]:
    """While :func:`drive` runs a batch, a polite stop (SIGTERM: a shutdown, a service
    manager, ``kill``; SIGHUP: the terminal closed) ends it as Ctrl-C does: finished scans
    kept, the reports of what was done written and marked incomplete, the command to continue
    printed (a calibration: nothing calibrated, the screened scans kept). Without this,
    SIGTERM ended the process at once and wrote no report at all. The signal is noted in
    ``received`` (:func:`stopped_status`); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {signum: signal.signal(signum, stop) for signum in wanted}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _resume_command(args: argparse.Namespace, batch_id: str, verb: str = "resume") -> str:
    """The command that continues this batch with the same outputs: the reports asked for
    (``--report``, ``--name``), where they go and what they state, the same store and models.
    Without them a resume rewrites results.csv/json only and leaves the reports of the
    stopped run, which count only the scans done before Ctrl-C, beside them. With ``verb``
    ``"export"``, the command that writes a stored batch's outputs again the same way (a
    bare ``export ID`` looks in the default store and writes no report).

    The one definition of "the command that continues / exports this batch" (Ctrl-C, a full
    store disk, outputs that could not be written, export of an unfinished batch). It is
    quoted for a shell (:func:`_shell_join`), so a message ends with it rather than wrapping
    it in quotes of its own: a path holding ``'`` broke those."""
    words = ["medscreen", verb, batch_id, "--out", os.fsdecode(args.out)]
    for option in ("db", "report", "name", "clinic", "operator", "operating_point"):
        value = getattr(args, option, None)
        if value:
            words += ["--" + option.replace("_", "-"), os.fsdecode(value)]
    for folder in getattr(args, "models", None) or ():
        words += ["--models", os.fsdecode(folder)]
    if getattr(args, "include_identifiers", False):
        words.append("--include-identifiers")
    return _shell_join(words)


def _shell_join(words: Sequence[str], *, windows: bool = os.name == "nt") -> str:
    """``words`` as one command line to paste into a shell: POSIX quoting (``shlex``), or on
    Windows the quoting its programs' argument parsing undoes (``"..."``, as cmd.exe and
    PowerShell pass it; single quotes would reach MedScreen as part of a path there)."""
    return subprocess.list2cmdline(words) if windows else shlex.join(words)


def _with_store_remedy(
    exc: StoreError, args: argparse.Namespace, batch_id: str | None, verb: str = "resume"
) -> StoreError:
    """A full store disk's message with the command that continues *this* batch in *this*
    store (the store's own message cannot know the run's ``--db`` and options: "resume the
    batch ('medscreen resume')", run as printed, looked in the default store); ``verb``
    ``"export"``: the export to run again. Before any batch started there is nothing to
    continue: the command is run again. Other store errors are returned as they are."""
    if exc.disk_full is None or exc.path is None:
        return exc
    if batch_id is None:
        then = "run the command again"
    elif verb == "export":
        then = f"export it again with: {_resume_command(args, batch_id, verb)}"
    else:
        then = f"continue the batch with: {_resume_command(args, batch_id)}"
    return StoreError(
        disk_full_message(exc.path, exc.disk_full, then), path=exc.path, disk_full=exc.disk_full
    )


def _patients(args: argparse.Namespace, store: ResultsStore, batch_id: str) -> PatientChoice:
    """The batch's patient group: ``--patients`` when given (then stored with the batch),
    else what the batch has stored; with the staff's per-scan overrides from the store."""
    if args.patients is not None:
        store.set_batch_patients(batch_id, parse_group(args.patients))
    return store.patient_choice(batch_id)


def _workers(value: str) -> int | None:
    """``--workers``: a whole number of decoder threads, 1 or more (0: the default). A
    negative number reached the thread pool and ended the batch in a traceback."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more (0: one per core)")
    return number or None


def _report_name(value: str) -> str:
    """``--name``: a plain file name without extension (the reports add theirs)."""
    if not value or Path(value).name != value or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"{value!r} must be a plain file name without folders")
    return value


def _write_outputs(
    results: Iterable[ScanResult],
    ctx: ReportContext,
    out: Path,
    formats: Sequence[str],
    name: str | None = None,
    args: argparse.Namespace | None = None,
) -> list[Path]:
    """Write results.csv, results.json and the requested reports; an I/O failure (a full or
    vanished disk) becomes one clear message, and the batch stays in the store to export
    (the message gives the export command with this run's options, ``args``).

    The reports are ``NAME.<fmt>``, by default the engine's name for them
    (``medscreen-<clinic>-<date>-<batch>``, as the window names its export)."""
    from desktop.engine.reports import write_csv, write_json, write_reports

    try:
        written = [
            write_csv(results, ctx, out / "results.csv"),
            write_json(results, ctx, out / "results.json"),
        ]
        if formats:
            written += write_reports(results, ctx, out, formats, name)
    except OSError as exc:
        log.debug("writing the results failed", exc_info=True)
        again = (
            _resume_command(args, ctx.batch_id, "export")
            if args is not None
            else f"medscreen export {ctx.batch_id} --out DIR"
        )
        raise BatchError(
            f"could not write the results to {display_path(out)}: {_os_reason(exc)}. "
            f"Every finished scan of batch {ctx.batch_id} is kept in the results store: when "
            f"there is room (or with another --out), write them with: {again}"
        ) from exc
    return written


def _os_reason(exc: OSError) -> str:
    """An OSError in words: 'No space left on device (ENOSPC): /path'."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0)
    if code:
        reason += f" ({code})"
    if exc.filename:
        reason += f": {display_path(os.fsdecode(exc.filename))}"
    return reason


def _export(args: argparse.Namespace) -> int:
    """``medscreen export BATCH --out DIR``: the outputs of a stored batch, written again.

    For a batch whose outputs could not be written (a full disk), or copies for another
    folder, operating point or report format. Nothing is screened.
    """
    from desktop.engine.reports import ReportContext, StoredBatch, parse_formats

    out: Path = args.out
    try:
        formats = parse_formats([args.report])
        choice = ThresholdChoice.parse(_policy_point(args.operating_point))
    except ValueError as exc:
        raise BatchError(str(exc)) from exc
    store = _existing_store(args)
    info = store.batch(_batch_id(store, args.batch))
    assert info is not None  # _batch_id found it
    check_writable(out)
    # a batch a live process is screening now: not stopped, not to be resumed meanwhile
    running = info.status == BatchStatus.RUNNING and info.id not in {
        b.id for b in store.interrupted_batches()
    }
    # Nothing is screened: the models are verified (their manifests name the columns and
    # thresholds) but no ONNX Runtime session is opened.
    models = plan_model_set(args.models or default_model_dirs(), choose_device(args.device))
    _check_named_models(choice, models, args.operating_point)
    for manifest in models.manifests.values():
        if manifest.role == "finding":
            choice.resolve(manifest)
    ctx = ReportContext.for_batch(
        info.id,
        models,
        choice,
        clinic_name=args.clinic,
        operator=args.operator,
        include_identifiers=args.include_identifiers,
        patients=_patients(args, store, info.id),
        decisions=store.decisions(),
        typed_patient_ids=store.typed_patient_ids() if args.include_identifiers else None,
        files_not_screened=(not_screened := store.files_not_screened(info.id)),
        # the device the batch ran on, as its process recorded it; never this command's
        device=info.device or "not recorded for this batch",
        still_being_screened=running,
        resume_command=_resume_command(args, info.id) if not_screened and not running else "",
        same_content_copies=store.same_content_copies(info.id),
    )
    results = StoredBatch(store, info.id)  # streamed per pass, thumbnails fetched one by one
    written = _write_outputs(results, ctx, out, formats, args.name, args)
    stream = sys.stderr
    _print_summary(None, results, ctx, written, stream)
    total = info.total if info.total is not None else "?"
    if running:
        print(
            f"  batch {info.id} is still being screened: {info.done}/{total} scans finished "
            "so far; export it again when it has finished",
            file=stream,
        )
    elif info.status != BatchStatus.COMPLETED:
        print(
            f"  batch {info.id} is {info.status}: {info.done}/{total} scans finished; "
            f"continue it with: {_resume_command(args, info.id)}",
            file=stream,
        )
    return 0


def _print_summary(
    summary: BatchSummary | None,
    results: Iterable[ScanResult],
    ctx: ReportContext,
    written: list[Path],
    stream: TextIO,
) -> None:
    manifests = ctx.manifests
    choice = ctx.choice
    counts = BatchCounts.of(results, manifests, choice, ctx.patients)
    print("", file=stream)
    print(
        f"{counted(counts.total, 'file')}: {counts.screened} screened, "
        # "errors", as the window, the PDF and the JSON count them: "could not be read" was
        # wrong for an image refused for its size or a DICOM report with no image
        f"{counted(counts.not_chest_xray, 'not chest X-ray')}, {counted(counts.errors, 'error')}",
        file=stream,
    )
    for model_id, n in counts.flagged.items():
        point = choice.resolve(manifests[model_id])
        outside = counts.outside_scope.get(model_id, 0)
        scope = f"; {outside} outside its scope (not flagged)" if outside else ""
        print(f"  {model_id}: {n} flagged at {point.describe()}{scope}", file=stream)
    if ctx.same_content_copies:  # a programme adding up scans counts these twice
        n = ctx.same_content_copies
        print(
            f"  {counted(n, 'file')} {'has' if n == 1 else 'have'} the same content as another "
            "file of this batch (the same scan twice): each is counted",
            file=stream,
        )
    if counts.outside_scope_any:
        print(
            f"  patient group: {ctx.patients.label()}; "
            f"{counted(counts.outside_scope_any, 'scan')} outside a model's scope "
            "(reasons in results.csv, column outside_scope)",
            file=stream,
        )
    if summary is not None:
        extra = []
        if summary.reused:  # an earlier run's, or a copy's screened earlier in this batch
            extra.append(f"{summary.reused} already screened with these models (results reused)")
        if summary.already_done:
            extra.append(f"{summary.already_done} finished before this resume")
        d = summary.discovered
        for path in d.missing[:_MISSING_NAMED]:  # a mistyped path: say so, not only a row
            extra.append(f"not found: {one_line(display_path(os.fspath(path)))}")
        if len(d.missing) > _MISSING_NAMED:
            extra.append(f"{len(d.missing) - _MISSING_NAMED} more paths not found")
        if d.skipped_non_scans:
            extra.append(counted(d.skipped_non_scans, "non-scan file") + " skipped")
        if d.loops:
            extra.append(counted(d.loops, "folder loop") + " skipped")
        if d.repeated_folders:
            extra.append(
                counted(d.repeated_folders, "folder")
                + " given twice (by a link, or inside another folder given) screened once"
            )
        for folder in d.unreadable_folders:
            extra.append(f"folder not readable: {folder}")
        if extra:
            print("  " + "; ".join(extra), file=stream)
        print(f"  batch {summary.batch_id} in {duration(summary.elapsed_s)}", file=stream)
    for path in written:
        print(f"  wrote {path}", file=stream)
    if ctx.include_identifiers and written:
        # as the results store: the same names, so the same protection (atomic.PRIVATE_MODE)
        where = (
            "they keep the folder's permissions: check who may read it"
            if os.name == "nt"
            else "written readable by this user only (mode 0600)"
        )
        print(f"  these outputs hold patient identifiers: {where}", file=stream)
    if ctx.unsigned_models:
        print(
            f"  UNSIGNED MODELS: {', '.join(ctx.unsigned_models)} (developer option "
            f"MEDSCREEN_ALLOW_UNSIGNED_MODELS); these results are not from a released model",
            file=stream,
        )
    print(DISCLAIMER, file=stream)


def drive(
    generator: Generator[Progress, None, _T],
    runner: BatchRunner,
    bar: _ProgressBar,
    on_event: Callable[[Progress], None] | None = None,
    *,
    stopped_by: list[int] | None = None,
) -> _T | None:
    """Run a batch generator to its end, each event shown on ``bar`` (after ``on_event``),
    and return what it returns; ``None`` when Ctrl-C, SIGTERM or SIGHUP stopped it (the
    signal is added to ``stopped_by``; :func:`stopped_status` makes the exit status): the
    runner is then asked to cancel and the generator closed (finished scans are kept). The
    bar is closed either way."""
    try:
        with _stop_like_ctrl_c([] if stopped_by is None else stopped_by):
            while True:
                try:
                    event = next(generator)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                if on_event is not None:
                    on_event(event)
                bar.update(event)
    except KeyboardInterrupt:
        runner.cancel()
        generator.close()
        return None
    finally:
        bar.close()


def stopped_status(stopped_by: list[int]) -> int:
    """The exit status of a command stopped mid-batch: 130 for Ctrl-C, else 128 + the
    signal's number (143 for SIGTERM, 129 for SIGHUP), as a shell reports it."""
    return 128 + stopped_by[0] if stopped_by else 130


class _ProgressBar:
    """A one-line bar on a terminal; a line every few seconds when output is redirected."""

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last = 0.0

    def update(self, event: Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        final = event.done == event.total
        if not self.tty and not final and now - self._last < 5.0:
            return
        if self.tty and not final and now - self._last < 0.1:
            return
        self._last = now
        width = 28
        filled = int(width * event.fraction)
        eta = _clock(event.eta_s) if event.eta_s is not None else "--:--"
        name = one_line(display_path(os.path.basename(event.current or "")))
        if len(name) > 30:
            name = "…" + name[-29:]
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {event.done}/{event.total}  "
            f"{event.rate:5.1f} scans/s  ETA {eta}  {name}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:100])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        if hours
        else f"{rest // 60:02d}:{rest % 60:02d}"
    )


if __name__ == "__main__":  # `python -m desktop.cli`: without this it screened nothing, exit 0
    raise SystemExit(main())
