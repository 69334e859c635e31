"""A study/series browser: from :func:`dicomxr.scan` results, pick a series and view it.

Studies come from the catalog (one row per instance, header-only); the series of the chosen
study come from the series planner, so a SeriesInstanceUID that the loader splits (localizers,
sizes, stacks) shows as the separate series it opens as. No pixel is read until "view".
"""

from __future__ import annotations

import html
import logging
import warnings
from typing import Any

import ipywidgets as widgets
import traitlets

logger = logging.getLogger(__name__)

__all__ = ["Browser", "browse"]


def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        if value != value:  # NaN / NA
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


class Browser(widgets.VBox):
    """Pick a study and a series from a catalog and open the viewer on it.

    Build it with :func:`browse`. ``study`` (StudyInstanceUID) and ``series`` (plan key)
    are traits; :meth:`open_viewer` opens the selected series and returns its :class:`Viewer`.
    """

    study = traitlets.Unicode("", help="StudyInstanceUID of the selected study")
    series = traitlets.Unicode("", help="key of the selected series plan")

    def __init__(
        self,
        catalog: Any,
        *,
        include_patient: bool = False,
        view_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.catalog = catalog
        self.include_patient = include_patient
        self.view_kwargs = dict(view_kwargs or {})
        self.viewer: Any = None
        self.plans: dict[str, Any] = {}
        self._plans_of: dict[str, list[Any]] = {}
        self._notes: dict[str, str] = {}
        self._studies = self._study_rows()
        self._study_w = widgets.Select(
            options=[(label, uid) for uid, label in self._studies],
            description="study",
            rows=min(6, max(2, len(self._studies))),
            layout={"width": "720px"},
        )
        self._series_w = widgets.Select(description="series", rows=8, layout={"width": "720px"})
        self._open_w = widgets.Button(description="view", icon="eye", button_style="primary")
        self._message = widgets.HTML()
        self._slot = widgets.VBox()
        skipped = list(getattr(catalog, "attrs", {}).get("skipped", []) or [])
        summary = f"{len(catalog)} instances, {len(self._studies)} studies"
        if skipped:
            summary += f", {len(skipped)} files skipped (see dicomxr.catalog.skipped(df))"
        self._summary = widgets.HTML(f"<span style='color:#555'>{html.escape(summary)}</span>")
        self._study_w.observe(lambda ch: setattr(self, "study", ch["new"] or ""), "value")
        self._series_w.observe(lambda ch: setattr(self, "series", ch["new"] or ""), "value")
        self._open_w.on_click(lambda _b: self._open_clicked())
        self.children = [
            self._summary,
            self._study_w,
            self._series_w,
            widgets.HBox([self._open_w, self._message]),
            self._slot,
        ]
        if self._studies:
            self.study = self._studies[0][0]

    def __repr__(self) -> str:
        return (
            f"<dicomxr Browser: {len(self.catalog)} instances, {len(self._studies)} studies, "
            f"study={self.study!r}, series={self.series!r}>"
        )

    def _study_rows(self) -> list[tuple[str, str]]:
        df = self.catalog
        if len(df) == 0:
            return []
        if "StudyInstanceUID" not in df.columns:
            raise ValueError(
                "the catalog has no StudyInstanceUID column: pass dicomxr.scan(...) results"
            )
        rows = []
        for uid, group in df.groupby("StudyInstanceUID", sort=False, dropna=False):
            first = group.iloc[0]
            bits = [
                _text(first.get("StudyDate")),
                _text(first.get("StudyDescription")) or "(no description)",
            ]
            if self.include_patient:
                bits.insert(0, _text(first.get("PatientID")))
            n_series = group["SeriesInstanceUID"].nunique() if "SeriesInstanceUID" in group else 0
            modalities = "/".join(sorted({_text(m) for m in group.get("Modality", []) if _text(m)}))
            bits.append(f"{modalities} {n_series} series, {len(group)} files")
            rows.append((_text(uid), " · ".join(b for b in bits if b)))
        return rows

    @traitlets.observe("study")
    def _on_study(self, change: Any) -> None:
        uid = change["new"]
        if self._study_w.value != uid:
            self._study_w.value = uid
        plans = self._plans_for(uid)
        options = []
        for plan, row in zip(plans, self._table(plans), strict=True):
            label = " · ".join(
                b
                for b in (
                    "" if row["SeriesNumber"] is None else f"#{row['SeriesNumber']}",
                    row["SeriesDescription"] or "(no description)",
                    row["Modality"],
                    f"{row['dims']} {row['shape']}",
                    f"{row['frames']} frames",
                )
                if b
            )
            options.append((label, plan.key))
        self._series_w.options = options
        self.series = options[0][1] if options else ""

    @traitlets.observe("series")
    def _on_series(self, change: Any) -> None:
        if change["new"] and self._series_w.value != change["new"]:
            self._series_w.value = change["new"]

    def _table(self, plans: list[Any]) -> list[dict[str, Any]]:
        from dicomxr.api import series_table

        return series_table(plans)

    def _plans_for(self, uid: str) -> list[Any]:
        if uid in self._plans_of:
            self._message.value = self._notes.get(uid, "")
            return self._plans_of[uid]
        from dicomxr.api import list_series

        df = self.catalog
        sub = df[df["StudyInstanceUID"].astype(str) == uid] if uid else df
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                plans = list_series(sub)
        except Exception as exc:  # a broken study must not break the browser
            logger.warning("could not plan the series of study %s: %s", uid, exc)
            self._message.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            plans = []
        else:
            # what the planner noticed (irregular spacing, tilt, frames set apart) shows
            # beside the lists, and still reaches the caller as the warnings it is
            self._message.value = "".join(
                f"<div style='color:#a60'>{html.escape(str(w.message))}</div>" for w in caught
            )
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._notes[uid] = self._message.value
        self._plans_of[uid] = plans
        for plan in plans:
            self.plans[plan.key] = plan
        return plans

    def _open_clicked(self) -> None:
        try:
            self.open_viewer()
        except Exception as exc:
            logger.warning("could not open series %s: %s", self.series, exc)
            self._message.value = f"<span style='color:#b00'>{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>"

    def open_viewer(self, series: str | None = None) -> Any:
        """Open a series (default: the selected one), show its viewer below the lists, return it."""
        from dicomxr.api import open_series
        from dicomxr.viewer._viewer import view

        key = series or self.series
        if not key:
            raise ValueError("no series selected")
        if key not in self.plans:
            raise KeyError(f"unknown series key {key!r}; known keys: {sorted(self.plans)}")
        da = open_series(self.plans[key], include_patient=self.include_patient)
        self.viewer = view(da, **self.view_kwargs)
        self.series = key
        self._message.value = f"<span style='color:#555'>opened {html.escape(key)}</span>"
        self._slot.children = [self.viewer]
        return self.viewer


def browse(
    source: Any,
    *,
    recursive: bool = True,
    include_patient: bool = False,
    **view_kwargs: Any,
) -> Browser:
    """Browse the studies and series of a catalog, and view the one you pick.

    Parameters
    ----------
    source
        A catalog from :func:`dicomxr.scan`, or anything ``scan`` accepts (folder, files,
        glob, DICOMDIR), which is then scanned (headers only).
    recursive
        Descend into sub-folders when scanning.
    include_patient
        Show PatientID in the study list and keep patient attributes on the opened series.
    **view_kwargs
        Passed to :func:`dicomxr.view` for the series opened.

    Returns
    -------
    Browser
        The widget; ``study``/``series`` traits select, :meth:`Browser.open_viewer` views.

    Examples
    --------
    >>> import dicomxr
    >>> b = dicomxr.browse(dicomxr.scan("/data/dicom"))  # doctest: +SKIP
    >>> v = b.open_viewer()  # the first series of the first study  # doctest: +SKIP
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        catalog = source
    else:
        from dicomxr.catalog import scan

        catalog = scan(source, recursive=recursive)
    return Browser(catalog, include_patient=include_patient, view_kwargs=view_kwargs)
