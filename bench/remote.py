"""Scan and load of one series from S3 (moto's server on loopback) against the local folder.

Run on demand (not a test)::

    python bench/remote.py [FOLDER] [--repeat N]

FOLDER defaults to the 140-slice Philips head CT of the real corpora (``$DICOMXR_TEST_DATA``
or ``../shared/data``). Its instances are put in a throwaway bucket laid out like the public
archives (``<series-uuid>/<instance-uuid>.dcm``) on moto's S3 server at 127.0.0.1 (needs
``moto[server]`` and s3fs). Prints best-of-N wall times of ``scan`` and of
``open_series(...).values`` for the folder and the bucket, their ratios, and the bytes the
server sent per object during the scan (counted by a WSGI wrapper around moto, not by
dicomxr). Loopback has no network latency: the ratios show dicomxr's own overhead, a real
store adds its round trips (the scan overlaps them in 16 threads).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _default_folder() -> Path:
    data = Path(os.environ.get("DICOMXR_TEST_DATA", ROOT.parent / "shared" / "data"))
    return data / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class _Counter:
    """WSGI wrapper: bytes of every GET response body of a ``.dcm`` object."""

    def __init__(self, app):
        self.app = app
        self.sent: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        key = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not key.endswith(".dcm"):
            return body
        chunks = list(body)
        with self.lock:
            self.sent[key] += sum(len(c) for c in chunks)
        return chunks


def main() -> None:
    """Put the series in a bucket, time scan and load both ways, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=_default_folder())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import s3fs
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    import dicomxr

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counter = _Counter(DomainDispatcherApplication(create_backend_app))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server("127.0.0.1", port, counter, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = {
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
    }
    try:
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        prefix = f"bench/{uuid.uuid4()}"
        files = [f for f in sorted(args.folder.iterdir()) if f.is_file() and f.name != "DIRFILE"]
        sizes = []
        for f in files:
            data = f.read_bytes()
            sizes.append(len(data))
            fs.pipe(f"{prefix}/{uuid.uuid4()}.dcm", data)
        url = f"s3://{prefix}/"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local = [f.as_posix() for f in files]
            t_scan_local = _best(lambda: dicomxr.scan(local, progress=False), args.repeat)
            counter.sent.clear()
            dicomxr.scan(url, storage_options=options, progress=False)
            per_object = sum(counter.sent.values()) / max(len(counter.sent), 1)
            t_scan_s3 = _best(
                lambda: dicomxr.scan(url, storage_options=options, progress=False), args.repeat
            )
            t_load_local = _best(lambda: dicomxr.open_series(local).values, args.repeat)
            t_load_s3 = _best(
                lambda: dicomxr.open_series(url, storage_options=options).values, args.repeat
            )
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    mean_size = sum(sizes) / len(sizes)
    print(f"series: {args.folder} ({len(files)} files, {sum(sizes) / 2**20:.1f} MiB)")
    print(
        f"scan bytes per object:   {per_object:,.0f} of {mean_size:,.0f} "
        f"({per_object / mean_size:.1%})"
    )
    print(
        f"scan  local {t_scan_local:6.3f} s   s3 {t_scan_s3:6.3f} s   ratio {t_scan_s3 / t_scan_local:5.1f}x"
    )
    print(
        f"load  local {t_load_local:6.3f} s   s3 {t_load_s3:6.3f} s   ratio {t_load_s3 / t_load_local:5.1f}x"
    )


if __name__ == "__main__":
    main()
