"""`s3backup`: the command line. Parses options, runs the sync, reports, and sets the exit code.

Exit codes: 0 in sync; 1 some files failed (the rest synced), or a guard refused deletions;
2 a usage or configuration error, shown as one line with no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import __doc__ as package_doc
from .config import SyncOptions, parse_duration, parse_recycle_cap, parse_s3_url, parse_size, parse_timeout
from .errors import ConfigError, RunError
from .filters import Filters
from .remote import make_run_client, make_s3_client
from .report import Progress, RunCounters, Summary, human_bytes
from .shards import MAX_SHARDS, Shard, parse_run_id, parse_shard

if TYPE_CHECKING:  # imported when their command runs: restore pulls in asyncio
    from .restore import RestoreOptions
    from .verify import VerifyOptions

log = logging.getLogger("s3backup")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump, whatever the user typed
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="s3backup", description=package_doc)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sync = commands.add_parser(
        "sync",
        help="make s3://BUCKET/PREFIX hold a copy of every file under SOURCE_DIR",
        description="One-way sync of SOURCE_DIR to s3://BUCKET[/PREFIX]. Never downloads data, never "
        "uploads what is already there, and deletes nothing remote unless --recycle-after is given. "
        "Symlinks are not followed unless --follow-symlinks is given.",
    )
    sync.add_argument("source", metavar="SOURCE_DIR")
    sync.add_argument("destination", metavar="s3://BUCKET[/PREFIX]")
    s3 = sync.add_argument_group("S3 endpoint (credentials come from the standard AWS chain)")
    s3.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    s3.add_argument("--region", metavar="NAME")
    s3.add_argument("--path-style", action="store_true", help="path-style addressing (most S3-compatible stores)")
    what = sync.add_argument_group("what to sync")
    what.add_argument("--compare", choices=("md5", "size"), default="md5",
                      help="judge existing objects by size and MD5 (default, works for multipart) or size alone")
    _add_filter_arguments(what)
    what.add_argument("--follow-symlinks", action="store_true")
    what.add_argument("--include-lost-found", action="store_true",
                      help="back up lost+found at the source root too (skipped by default)")
    what.add_argument("--no-hash-cache", dest="hash_cache", action="store_false",
                      help="do not keep file checksums under PREFIX/.s3backup/ (unchanged files get re-read)")
    recycle = sync.add_argument_group("recycling remote copies of deleted files")
    recycle.add_argument("--recycle-after", metavar="AGE",
                         help="delete remote objects whose local file is gone once they are this old (e.g. 30d); "
                         "without it nothing remote is ever deleted")
    recycle.add_argument("--max-recycle", default="50%", metavar="N|N%",
                         help="refuse to delete more than this per run (default: 50%% of the objects)")
    add_shard_arguments(sync)
    objects = sync.add_argument_group("object settings")
    objects.add_argument("--storage-class", metavar="CLASS")
    objects.add_argument("--sse", choices=("AES256", "aws:kms"))
    objects.add_argument("--sse-kms-key-id", metavar="ID")
    transfer = sync.add_argument_group("transfer")
    transfer.add_argument("--part-size", default="auto", metavar="SIZE",
                          help="multipart part size (default auto: 8MiB, doubled to stay within 10,000 parts)")
    transfer.add_argument("--concurrency", type=int, default=8, metavar="N",
                          help="parallel requests; memory is about N x part size (default 8)")
    transfer.add_argument("--bwlimit", metavar="RATE", help="upload bandwidth cap in bytes/s, e.g. 20MiB")
    output = sync.add_argument_group("output")
    output.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    output.add_argument("--summary-json", metavar="PATH", help="write the run's summary as JSON ('-' for stdout)")
    output.add_argument("--pushgateway", metavar="URL", help="push the run's metrics to this Prometheus Pushgateway")
    output.add_argument("--backup-name", metavar="NAME", help="the backup's name in metrics (default: BUCKET/PREFIX)")
    output.add_argument("--backup-namespace", metavar="NS", help="a namespace label for the metrics")
    output.add_argument("--expected-interval", metavar="DURATION",
                        help="how often this backup runs (e.g. 1d), exported so alerts can tell a stale backup")
    output.add_argument("-v", "--verbose", action="count", default=0, help="log every file (-vv: debug)")
    output.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    add_restore_parser(commands)
    add_verify_parser(commands)
    add_recycle_command(commands)

    demo = commands.add_parser(
        "demo", help="back up a directory to a throwaway local S3 (SeaweedFS), twice",
        description="Starts a local SeaweedFS S3 on loopback, syncs DIR (a generated sample if omitted) "
        "to it, then syncs again to show that nothing is uploaded twice.",
    )
    demo.add_argument("directory", nargs="?", metavar="DIR")
    return parser


def _add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    s3 = parser.add_argument_group("S3 endpoint (credentials come from the standard AWS chain)")
    s3.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    s3.add_argument("--region", metavar="NAME")
    s3.add_argument("--path-style", action="store_true", help="path-style addressing (most S3-compatible stores)")


def _add_filter_arguments(group) -> None:
    group.add_argument("--include", action="append", default=[], metavar="GLOB", help="repeatable")
    group.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="repeatable")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument("--summary-json", metavar="PATH", help="write the run's summary as JSON ('-' for stdout)")
    output.add_argument("-v", "--verbose", action="count", default=0, help="log every file (-vv: debug)")
    output.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def add_restore_parser(commands) -> None:
    restore = commands.add_parser(
        "restore",
        help="bring the files under s3://BUCKET/PREFIX back into TARGET_DIR, checked",
        description="Download every object under s3://BUCKET[/PREFIX] into TARGET_DIR (created if missing). "
        "Each file is written under a temporary name, checked against the object's ETag, given its mtime "
        "and mode, and only then renamed. Files already there and identical are skipped, so an interrupted "
        "restore resumes; a different file is left alone and reported unless --overwrite is given.",
    )
    restore.add_argument("source", metavar="s3://BUCKET[/PREFIX]")
    restore.add_argument("target", metavar="TARGET_DIR")
    _add_s3_arguments(restore)
    what = restore.add_argument_group("what to restore")
    what.add_argument("--as-of", metavar="TIME",
                      help="restore the prefix as it was at TIME: RFC 3339 (2026-11-01T00:00:00Z) or a duration "
                      "ago (3d); needs a versioned bucket")
    what.add_argument("--overwrite", action="store_true", help="replace existing files that differ")
    _add_filter_arguments(what)
    restore.add_argument("--concurrency", type=int, default=8, metavar="N",
                         help="parallel files, and parallel ranges of large files (default 8); "
                         "small files keep up to 32 × N requests in flight (256 at most), within 8 × N MiB")
    restore.add_argument("--dry-run", action="store_true", help="print what would be restored; change nothing")
    _add_output_arguments(restore)


def add_verify_parser(commands) -> None:
    verify = commands.add_parser(
        "verify",
        help="check that s3://BUCKET/PREFIX holds every file under SOURCE_DIR unchanged, without downloading",
        description="Compare SOURCE_DIR with s3://BUCKET[/PREFIX] by size and ETag (local ETags from the hash "
        "cache where still valid). Prints one line per difference: 'missing KEY', 'differs KEY', 'extra KEY', "
        "and with --sample 'corrupt KEY'. Exits 0 when the remote holds every local file unchanged, 1 otherwise.",
    )
    verify.add_argument("source", metavar="SOURCE_DIR")
    verify.add_argument("destination", metavar="s3://BUCKET[/PREFIX]")
    _add_s3_arguments(verify)
    what = verify.add_argument_group("what to check")
    what.add_argument("--sample", metavar="PERCENT",
                      help="also download this share of the objects (e.g. 5 or 5%%) and check their content")
    what.add_argument("--seed", type=int, metavar="N", help="pick the same sample again (default: random)")
    _add_filter_arguments(what)
    what.add_argument("--no-hash-cache", dest="hash_cache", action="store_false",
                      help="re-read every local file instead of trusting the hash cache")
    verify.add_argument("--concurrency", type=int, default=8, metavar="N", help="parallel checks (default 8)")
    _add_output_arguments(verify)


def _parse_percent(text: str) -> float:
    try:
        return float(text.strip().removesuffix("%"))
    except ValueError:
        raise ConfigError(f"invalid --sample {text!r}: a percentage, e.g. 5 or 0.5%") from None


def restore_options_from_args(args: argparse.Namespace):
    from datetime import UTC, datetime

    from .restore import RestoreOptions
    from .restore_plan import parse_as_of

    bucket, prefix = parse_s3_url(args.source)
    Filters(tuple(args.include), tuple(args.exclude))
    return RestoreOptions(
        bucket=bucket,
        prefix=prefix,
        target=Path(args.target),
        endpoint_url=args.endpoint_url,
        region=args.region,
        path_style=args.path_style,
        as_of=parse_as_of(args.as_of, datetime.now(UTC)) if args.as_of else None,
        overwrite=args.overwrite,
        includes=tuple(args.include),
        excludes=tuple(args.exclude),
        concurrency=args.concurrency,
        dry_run=args.dry_run,
        connect_timeout=parse_timeout("S3BACKUP_CONNECT_TIMEOUT", os.environ.get("S3BACKUP_CONNECT_TIMEOUT"), 10),
        read_timeout=parse_timeout("S3BACKUP_READ_TIMEOUT", os.environ.get("S3BACKUP_READ_TIMEOUT"), 60),
    )


def verify_options_from_args(args: argparse.Namespace):
    from .verify import VerifyOptions

    bucket, prefix = parse_s3_url(args.destination)
    if args.seed is not None and args.sample is None:
        raise ConfigError("--seed needs --sample")
    return VerifyOptions(
        source=Path(args.source),
        bucket=bucket,
        prefix=prefix,
        endpoint_url=args.endpoint_url,
        region=args.region,
        path_style=args.path_style,
        includes=tuple(args.include),
        excludes=tuple(args.exclude),
        sample_percent=_parse_percent(args.sample) if args.sample is not None else None,
        seed=args.seed,
        hash_cache=args.hash_cache,
        concurrency=args.concurrency,
        connect_timeout=parse_timeout("S3BACKUP_CONNECT_TIMEOUT", os.environ.get("S3BACKUP_CONNECT_TIMEOUT"), 10),
        read_timeout=parse_timeout("S3BACKUP_READ_TIMEOUT", os.environ.get("S3BACKUP_READ_TIMEOUT"), 60),
    )


def add_shard_arguments(sync: argparse.ArgumentParser) -> None:
    shards = sync.add_argument_group("scale-out (one prefix over N processes or pods)")
    shards.add_argument("--shard", metavar="I/N",
                        help="handle only the keys of shard I of N (0 <= I < N). A shard of N > 1 keeps its own "
                        "state and deletes nothing: `s3backup recycle` does, once all N shards succeeded")
    shards.add_argument("--run-id", metavar="ID",
                        help="names this run's shard results (the same for every shard of a run; needed with "
                        "--shard I/N, N > 1)")


def add_recycle_command(commands) -> None:
    recycle = commands.add_parser(
        "recycle", help="the final step of a sharded sync run: recycle, if every shard succeeded",
        description="Reads the results the N shards of run ID left under PREFIX/.s3backup/runs/ID/ and deletes "
        "their recycle candidates only if every shard succeeded, the source was not empty, and the total stays "
        "under --max-recycle (of all objects under the prefix). Exit 0 when done, 1 when recycling was refused.",
    )
    recycle.add_argument("destination", metavar="s3://BUCKET[/PREFIX]")
    recycle.add_argument("--run-id", required=True, metavar="ID", help="the --run-id the shards ran with")
    recycle.add_argument("--shards", required=True, type=_shard_count, metavar="N", help="the N of --shard I/N")
    recycle.add_argument("--max-recycle", default="50%", metavar="N|N%",
                         help="refuse to delete more than this in all (default: 50%% of the objects)")
    _add_s3_arguments(recycle)
    recycle.add_argument("--concurrency", type=int, default=8, metavar="N")
    recycle.add_argument("--dry-run", action="store_true", help="print what would be recycled; delete nothing")
    _add_output_arguments(recycle)
    metrics = recycle.add_argument_group("metrics (the step's own group: the shards' grouping key, shard=\"recycle\")")
    metrics.add_argument("--pushgateway", metavar="URL", help="push what the step recycled, or why it refused")
    metrics.add_argument("--backup-name", metavar="NAME", help="the backup's name in metrics (default: BUCKET/PREFIX)")
    metrics.add_argument("--backup-namespace", metavar="NS", help="a namespace label for the metrics")


def _shard_count(text: str) -> int:
    if not text.isdigit() or not 2 <= int(text) <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"invalid shard count {text!r}: 2 to {MAX_SHARDS} (one shard, or no "
                                         "--shard, recycles by itself)")
    return int(text)


def run_recycle_command(args: argparse.Namespace) -> int:
    """`s3backup recycle`: the final step of a sharded run (shard_runs.finalize_recycle)."""
    from .shard_runs import finalize_recycle

    setup_logging(args.verbose, args.quiet)
    summary = Summary(dry_run=args.dry_run)
    with one_line_errors(summary):
        bucket, prefix = parse_s3_url(args.destination)
        run_id = parse_run_id(args.run_id)
        cap = parse_recycle_cap(args.max_recycle)
        if not 1 <= args.concurrency <= 256:
            raise ConfigError(f"invalid --concurrency {args.concurrency}: use 1 to 256")
        client = make_s3_client(endpoint_url=args.endpoint_url, region=args.region, path_style=args.path_style,
                                max_pool_connections=max(10, args.concurrency * 2 + 2))
        summary.run_timed(
            lambda: finalize_recycle(client, bucket, prefix, run_id=run_id, count=args.shards, cap=cap,
                                     concurrency=args.concurrency, dry_run=args.dry_run, summary=summary),
            lambda: bool(summary.recycle_blocked or summary.files_failed))  # partial: refused, or a delete failed
    if summary.result != "error" and not args.quiet:
        print(f"{summary.files_recycled} recycled, {summary.files_failed} failed"
              + (f"; recycling refused: {summary.recycle_blocked}" if summary.recycle_blocked else ""),
              file=sys.stderr, flush=True)
    write_summary(summary, args.summary_json)
    push_recycle_step_metrics(args, summary)
    return summary.exit_code


def push_recycle_step_metrics(args: argparse.Namespace, summary: Summary) -> None:
    if not args.pushgateway:
        return
    from .metrics import RECYCLE_STEP_SHARD, push_recycle_metrics

    grouping = {"backup": args.backup_name or args.destination.removeprefix("s3://").strip("/")}
    if args.backup_namespace:
        grouping = {"namespace": args.backup_namespace, **grouping}
    warning = push_recycle_metrics(args.pushgateway, {**grouping, "shard": RECYCLE_STEP_SHARD}, summary)
    if warning:
        log.warning(warning)


def options_from_args(args: argparse.Namespace) -> SyncOptions:
    bucket, prefix = parse_s3_url(args.destination)
    return SyncOptions(
        source=Path(args.source),
        bucket=bucket,
        prefix=prefix,
        endpoint_url=args.endpoint_url,
        region=args.region,
        path_style=args.path_style,
        compare=args.compare,
        recycle_after_seconds=parse_duration(args.recycle_after) if args.recycle_after else None,
        recycle_cap=parse_recycle_cap(args.max_recycle),
        includes=tuple(args.include),
        excludes=tuple(args.exclude),
        storage_class=args.storage_class,
        sse=args.sse,
        sse_kms_key_id=args.sse_kms_key_id,
        part_size=None if args.part_size == "auto" else parse_size(args.part_size),
        concurrency=args.concurrency,
        bwlimit=parse_size(args.bwlimit) if args.bwlimit else None,
        dry_run=args.dry_run,
        hash_cache=args.hash_cache,
        follow_symlinks=args.follow_symlinks,
        include_lost_found=args.include_lost_found,
        connect_timeout=parse_timeout("S3BACKUP_CONNECT_TIMEOUT", os.environ.get("S3BACKUP_CONNECT_TIMEOUT"), 10),
        read_timeout=parse_timeout("S3BACKUP_READ_TIMEOUT", os.environ.get("S3BACKUP_READ_TIMEOUT"), 60),
        shard=parse_shard(args.shard) if args.shard else Shard(),
        run_id=parse_run_id(args.run_id) if args.run_id else None,
    )


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-file lines only with -v; the summary line always.
    logging.getLogger("s3backup").setLevel(level if verbose else max(level, logging.WARNING))
    # urllib3 logs cut-short answers with a traceback; botocore retries them and we report the outcome.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 3 else logging.CRITICAL)


def describe(summary: Summary) -> str:
    s = summary
    verb = "would upload" if s.dry_run else "uploaded"
    text = (
        f"{s.files_scanned} files ({human_bytes(s.bytes_scanned)}) scanned: {verb} {s.files_uploaded} "
        f"({human_bytes(s.bytes_uploaded)}), {s.files_unchanged} unchanged, {s.files_recycled} recycled, "
        f"{s.files_failed} failed; {human_bytes(s.bytes_hashed)} read for checksums; "
        f"{s.duration_seconds:.1f}s"
    )
    if s.bytes_reused:
        text += f"; {human_bytes(s.bytes_reused)} resumed from an interrupted upload"
    return text


def write_summary(summary: Summary, path: str | None) -> None:
    if not path:
        return
    if path == "-":
        print(summary.to_json(), flush=True)
        return
    try:
        Path(path).write_text(summary.to_json() + "\n")
    except OSError as exc:
        log.warning("cannot write the summary to %s: %s", path, exc.strerror)


def _shard_label(text: str | None) -> str | None:
    """The `shard` grouping label of a `--shard I/N` run with N > 1 ("I"), else None (a bad --shard too:
    that run failed with its own message)."""
    try:
        shard = parse_shard(text) if text else Shard()
    except ConfigError:
        return None
    return None if shard.whole else str(shard.index)


def push_metrics(args: argparse.Namespace, summary: Summary, interval: float | None) -> None:
    if not args.pushgateway:
        return
    from .metrics import push_run_metrics

    name = args.backup_name or args.destination.removeprefix("s3://").strip("/")
    grouping = {"backup": name}
    if args.backup_namespace:
        grouping = {"namespace": args.backup_namespace, **grouping}
    shard = _shard_label(args.shard)
    if shard is not None:  # each shard its own group, so that shards never overwrite each other's metrics
        grouping["shard"] = shard
    warning = push_run_metrics(args.pushgateway, grouping, summary, interval)
    if warning:
        log.warning(warning)


@contextlib.contextmanager
def one_line_errors(summary: RunCounters) -> Iterator[None]:
    """Whatever stops a command ends as one line on stderr and a summary with result "error", never a traceback
    (-vv logs it): the user's or S3's fault (its exit code), Ctrl-C (130), or a bug (1)."""
    try:
        yield
        return
    except RunError as exc:
        summary.result, summary.error, summary.exit_code = "error", str(exc), exc.exit_code
        print(f"s3backup: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        summary.result, summary.error, summary.exit_code = "error", "interrupted", 130
        print("s3backup: interrupted", file=sys.stderr)
    except Exception as exc:  # a bug: still one line, a summary and metrics
        log.debug("internal error", exc_info=True)
        summary.result, summary.error, summary.exit_code = "error", f"internal error: {exc}"[:300], 1
        print(f"s3backup: internal error: {type(exc).__name__}: {exc} (run with -vv for details)", file=sys.stderr)
    summary.duration_seconds = round(time.time() - summary.started_at, 3)


def run_sync_command(args: argparse.Namespace) -> int:
    from .engine import run_sync

    setup_logging(args.verbose, args.quiet)
    summary = Summary(dry_run=args.dry_run)
    interval = None
    with one_line_errors(summary):
        if args.expected_interval:
            interval = parse_duration(args.expected_interval)
        options = options_from_args(args)
        client = long_lived_client(options)
        with Progress(summary, enabled=not args.quiet):
            run_sync(options, client=client, summary=summary)
    if summary.result != "error" and not args.quiet:
        print(describe(summary), file=sys.stderr, flush=True)
    write_summary(summary, args.summary_json)
    push_metrics(args, summary, interval)
    return summary.exit_code


def run_other_command(args: argparse.Namespace) -> int:
    """`restore` and `verify`: the same shape as sync, with their own options, summary and progress."""
    setup_logging(args.verbose, args.quiet)
    if args.command == "restore":
        from .restore import RestoreProgress, RestoreSummary, describe_restore, run_restore

        summary = RestoreSummary(dry_run=args.dry_run)
        progress, describe_run = RestoreProgress, describe_restore

        def work() -> None:
            options = restore_options_from_args(args)
            run_restore(options, client=long_lived_client(options), summary=summary)
    else:
        from .verify import VerifyProgress, VerifySummary, describe_verify, run_verify

        summary = VerifySummary()
        progress, describe_run = VerifyProgress, describe_verify

        def work() -> None:
            options = verify_options_from_args(args)
            run_verify(options, client=long_lived_client(options), summary=summary)
    with one_line_errors(summary), progress(summary, enabled=not args.quiet):
        work()
    if summary.result != "error" and not args.quiet:
        print(describe_run(summary), file=sys.stderr, flush=True)
    write_summary(summary, args.summary_json)  # type: ignore[arg-type]
    return summary.exit_code


def long_lived_client(options: SyncOptions | RestoreOptions | VerifyOptions):
    """The run's client, and then `gc.freeze()`: the modules and the client's service model (~56,000 objects) live
    until the process ends, so the collector is told never to walk them again, in the run's full collections nor
    in the one at exit (~50 ms of every run)."""
    client = make_run_client(options)
    gc.freeze()
    return client


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread its own heap arena, and freed request buffers linger in each: with
    8 upload threads that is ~20 MiB of RSS on top of the buffer pool. Two arenas are plenty."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.directory)
    if args.command == "recycle":
        return run_recycle_command(args)
    try:
        if args.command in ("restore", "verify"):
            return run_other_command(args)
        return run_sync_command(args)
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
