"""Viewer latency: time per slider step, uncached and for frames already seen.

    python bench/viewer.py [--data ../shared/data] [--steps 40]

Prints, for the 140-slice 512² Philips head CT (goal: <= 50 ms a step uncached, <= 20 ms for
a frame already seen) and per time step of the Philips 4D pCASL series (40 slices x 6
dynamics). A "step" is what a person's slider move costs in the kernel: read the frame(s)
the new picture needs, window, colour, PNG-encode, and hand the bytes to the Image widget.
Times are medians (and 90th percentiles) over the steps; the frames read are counted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
from pathlib import Path

import dicomxr

ROOT = Path(__file__).resolve().parents[1]


def _timed_steps(viewer, moves):
    times = []
    for move in moves:
        t0 = time.perf_counter()
        viewer.set_position(**move)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _summary(times):
    times = sorted(times)
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return f"median {statistics.median(times):6.1f} ms  p90 {p90:6.1f} ms  (n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=os.environ.get("DICOMXR_TEST_DATA", ROOT.parent / "shared" / "data")
    )
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    data = Path(args.data)

    ct_dir = data / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"
    dicomxr.set_options(progress_min_files=10**6)
    t0 = time.perf_counter()
    # ipywidgets, matplotlib colormaps, Pillow: paid once per kernel
    importlib.import_module("dicomxr.viewer._viewer")
    importlib.import_module("dicomxr.viewer.render").lut("gray")
    print(f"viewer imports (once per kernel): {1000 * (time.perf_counter() - t0):.0f} ms")
    t0 = time.perf_counter()
    ct = dicomxr.open_series(ct_dir)
    t1 = time.perf_counter()
    v = dicomxr.view(ct)
    t2 = time.perf_counter()
    print(
        f"CT {dict(ct.sizes)} {ct.dtype}: open_series {1000 * (t1 - t0):.0f} ms, "
        f"view() {1000 * (t2 - t1):.0f} ms, frames read at opening: {v.volume.reads}"
    )
    n = ct.sizes["slice"]
    start = v.position["slice"]
    forward = [{"slice": (start + 1 + k) % n} for k in range(min(args.steps, n - 1))]
    reads0 = v.volume.reads
    uncached = _timed_steps(v, forward)
    print(
        f"  slice step, uncached      {_summary(uncached)}  frames read {v.volume.reads - reads0}"
        f"  [goal <= 50 ms]"
    )
    reads0 = v.volume.reads
    back = list(reversed(forward))
    seen = _timed_steps(v, back)
    print(
        f"  slice step, frame seen    {_summary(seen)}  frames read {v.volume.reads - reads0}"
        f"  [goal <= 20 ms]"
    )
    # a frame seen, but under another window: no read, a new render
    v.set_preset("bone")
    reads0 = v.volume.reads
    rerender = _timed_steps(v, forward[: args.steps // 2])
    print(
        f"  slice step, seen, new window {_summary(rerender)}  frames read {v.volume.reads - reads0}"
    )
    t0 = time.perf_counter()
    v.view = "orthogonal"
    t1 = time.perf_counter()
    print(
        f"  orthogonal on: {1000 * (t1 - t0):.0f} ms (read the {v.volume.reads - reads0} frames "
        "of the stack not seen yet)"
    )
    rows = [{"row": 100 + 5 * k, "col": 400 - 5 * k} for k in range(args.steps // 2)]
    cross = _timed_steps(v, rows)
    print(f"  crosshair move, 3 planes  {_summary(cross)}")

    pcasl = data / "dcm_qa_philips_enh" / "In" / "cl"
    sources = sorted(str(p) for p in pcasl.glob("1903_*"))
    if not sources:
        sources = [str(dicomxr.data.sample_path())]
    t0 = time.perf_counter()
    da = dicomxr.open_series(sources if len(sources) > 1 else sources[0])
    t1 = time.perf_counter()
    v = dicomxr.view(da)
    t2 = time.perf_counter()
    print(
        f"pCASL {dict(da.sizes)} {da.dtype}: open_series {1000 * (t1 - t0):.0f} ms, "
        f"view() {1000 * (t2 - t1):.0f} ms, frames read at opening: {v.volume.reads}"
    )
    # every volume of the 4D series in turn (time x label for the pCASL), slice fixed
    import itertools

    extra = [d for d in da.dims if d not in ("slice", "row", "col", "channel")]
    combos = list(itertools.product(*(range(da.sizes[d]) for d in extra)))[1:]
    moves = [dict(zip(extra, c, strict=True)) for c in combos]
    reads0 = v.volume.reads
    steps = _timed_steps(v, moves)
    print(
        f"  volume step ({'/'.join(extra)}), uncached       {_summary(steps)}  frames read {v.volume.reads - reads0}"
    )
    steps = _timed_steps(v, list(reversed(moves)))
    print(f"  volume step, frame seen     {_summary(steps)}")


if __name__ == "__main__":
    main()
