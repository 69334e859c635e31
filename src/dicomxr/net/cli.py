"""Sub-commands ``dicomxr echo | find | get | move | store`` (a DICOM SCU on the command line).

Every command takes the peer as ``HOST PORT`` and its AE title as ``--aec``; pynetdicom is
imported only when one of them runs.

Examples
--------
.. code-block:: console

    $ dicomxr echo 127.0.0.1 4242 --aec ORTHANC
    $ dicomxr find 127.0.0.1 4242 --aec ORTHANC --level STUDY -k PatientName='DOE^*' -k StudyDate=2024-
    $ dicomxr get 127.0.0.1 4242 --aec ORTHANC data/ --study 1.2.3
    $ dicomxr move 127.0.0.1 4242 --aec ORTHANC data/ --study 1.2.3 --move-ae DICOMXR --move-port 11113
    $ dicomxr store 127.0.0.1 4242 --aec ORTHANC results/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _peer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="peer host name or address")
    parser.add_argument("port", type=int, help="peer DICOM port")
    parser.add_argument("--aec", default="ANY-SCP", help="called AE title (the peer's)")
    parser.add_argument("--aet", default="DICOMXR", help="calling AE title (ours)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="DIMSE and network timeout in seconds"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, help="TCP connection timeout in seconds"
    )
    parser.add_argument("--retries", type=int, default=2, help="association retries")


def _retrieve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", type=Path, help="destination folder (<Study>/<Series>/<SOP>.dcm)")
    parser.add_argument("--study", help="StudyInstanceUID")
    parser.add_argument("--series", action="append", help="SeriesInstanceUID (repeatable)")
    parser.add_argument("--instance", action="append", help="SOPInstanceUID (repeatable)")
    parser.add_argument("--parallel", type=int, help="associations in parallel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: Any) -> None:
    """Add ``echo``, ``find``, ``get``, ``move`` and ``store`` to the ``dicomxr`` command line."""
    echo = subparsers.add_parser(
        "echo", help="C-ECHO a DICOM peer", description="Verify a DICOM peer with C-ECHO."
    )
    _peer_arguments(echo)
    echo.set_defaults(func=_echo)

    find = subparsers.add_parser(
        "find",
        help="C-FIND: query a PACS, print a table",
        description=(
            "Query a PACS with C-FIND. Keys are DICOM keywords: -k PatientName='DOE^*' "
            "-k StudyDate=20240101-20241231. Prints a table, or writes --csv."
        ),
    )
    _peer_arguments(find)
    find.add_argument(
        "--level",
        default="STUDY",
        choices=["PATIENT", "STUDY", "SERIES", "IMAGE"],
        help="query level (default STUDY)",
    )
    find.add_argument("--model", choices=["study", "patient"], help="query model (root)")
    find.add_argument(
        "-k", "--key", action="append", default=[], metavar="KEYWORD=VALUE", help="matching key"
    )
    find.add_argument(
        "-r", "--return-key", action="append", default=[], help="extra attribute to return"
    )
    find.add_argument("--csv", type=Path, help="write the result to this CSV file")
    find.set_defaults(func=_find)

    get = subparsers.add_parser(
        "get",
        help="C-GET a study/series into a folder (resumable)",
        description=(
            "Retrieve with C-GET into DEST/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm. "
            "Instances already on disk are skipped, so running it again resumes."
        ),
    )
    _peer_arguments(get)
    _retrieve_arguments(get)
    get.set_defaults(func=_get)

    move = subparsers.add_parser(
        "move",
        help="C-MOVE a study/series to our own storage SCP (resumable)",
        description=(
            "Retrieve with C-MOVE: the peer sends to a storage SCP this command runs, which "
            "the peer must know under --move-ae with this host and --move-port."
        ),
    )
    _peer_arguments(move)
    _retrieve_arguments(move)
    move.add_argument("--move-ae", help="AE title of our storage SCP (default: --aet)")
    move.add_argument("--move-port", type=int, default=11113, help="port of our storage SCP")
    move.add_argument("--bind", default="", help="address our storage SCP listens on")
    move.set_defaults(func=_move)

    store = subparsers.add_parser(
        "store",
        help="C-STORE files or folders to a peer",
        description="Send DICOM files (folders are searched recursively) with C-STORE.",
    )
    _peer_arguments(store)
    store.add_argument("paths", nargs="+", type=Path, help="files or folders")
    store.add_argument("--no-progress", action="store_true", help="no progress bar")
    store.set_defaults(func=_store)


def _client(args: argparse.Namespace) -> Any:
    from dicomxr.net.client import DicomClient

    return DicomClient(
        args.host,
        args.port,
        called_ae=args.aec,
        calling_ae=args.aet,
        connection_timeout=args.connect_timeout,
        dimse_timeout=args.timeout,
        network_timeout=args.timeout,
        retries=args.retries,
        progress=not getattr(args, "no_progress", False),
        **({"parallel": args.parallel} if getattr(args, "parallel", None) else {}),
    )


def _run(fn: Any, args: argparse.Namespace) -> int:
    from dicomxr._cli_common import print_error
    from dicomxr.net.errors import NetError

    try:
        return fn(args)
    except NetError as exc:
        print_error(args.command, exc)
        return 1
    except ValueError as exc:
        print_error(args.command, exc)
        return 2


def _echo(args: argparse.Namespace) -> int:
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            rtt = client.echo()
        print(f"C-ECHO {args.aec}@{args.host}:{args.port}: success ({rtt * 1000:.1f} ms)")
        return 0

    return _run(run, args)


def _parse_keys(pairs: list[str]) -> dict[str, str]:
    keys = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"bad key {pair!r}: use KEYWORD=VALUE, e.g. PatientName='DOE^*'")
        keys[key.strip()] = value
    return keys


def _find(args: argparse.Namespace) -> int:
    def run(args: argparse.Namespace) -> int:
        import pandas as pd

        keys = _parse_keys(args.key)
        with _client(args) as client:
            df = client.find(args.level, model=args.model, return_keys=args.return_key, **keys)
        if args.csv:
            df.to_csv(args.csv, index=False)
            print(f"{len(df)} match(es) written to {args.csv}")
        else:
            with pd.option_context("display.max_rows", 500, "display.width", 200):
                print(df.to_string(index=False) if len(df) else "no match")
        return 0

    return _run(run, args)


def _report(report: Any) -> int:
    print(report.summary())
    print(f"into {report.dest}")
    return 0 if report.ok else 1


def _get(args: argparse.Namespace) -> int:
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            report = client.get(
                args.dest, study=args.study, series=args.series, instances=args.instance
            )
        return _report(report)

    return _run(run, args)


def _move(args: argparse.Namespace) -> int:
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            report = client.move(
                args.dest,
                study=args.study,
                series=args.series,
                instances=args.instance,
                ae_title=args.move_ae,
                port=args.move_port,
                bind=args.bind,
            )
        return _report(report)

    return _run(run, args)


def _store(args: argparse.Namespace) -> int:
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            report = client.store(args.paths)
        print(f"{len(report.sent)} instance(s) stored, {len(report.warnings)} with warnings")
        return 0

    return _run(run, args)
