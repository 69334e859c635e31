"""The interactive viewer: ipywidgets + PNG frames, computing only the planes on screen.

The widget is a ``VBox`` whose state lives in traits, so a script or a test drives it the
same way a person does:

- ``position``: ``{dim: index}`` for every dim (extra dims, ``slice``, ``row``, ``col``);
- ``level`` / ``window``: the display window (centre and width, in the array's units);
- ``preset``: the name of the window preset in use (``"custom"`` once moved by hand);
- ``view``: which plane is shown (``"axial"``... or ``"orthogonal"`` for the three planes);
- ``colormap``, ``overlay_opacity``.

:meth:`Viewer.displayed` returns the RGB array on screen and :meth:`Viewer.plane_values`
the values behind it.

Laziness. A slider step reads the frames the new picture needs and nothing else: the native
plane (fixed ``slice``) is one frame. The two other planes cut through every frame of the
stack, so they need the whole column of frames at the current extra index; that is why
the viewer opens on the native plane alone and computes the other two only when asked
(``view="orthogonal"`` or one of their names). Frames read once stay in an LRU
(``cache_mb``), so the crosshair then moves through them without reading again.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import traitlets

from dicomxr.intensity import check_width, voi_function
from dicomxr.spatial import attrs_with_affine
from dicomxr.viewer import windowing
from dicomxr.viewer.annotate import index_label
from dicomxr.viewer.planes import SPATIAL, Plane, planes_from_affine
from dicomxr.viewer.render import COLORMAPS, encode_png, lut, render
from dicomxr.viewer.volume import LRU, Volume, as_image

logger = logging.getLogger(__name__)

__all__ = ["Viewer", "view"]

ORTHOGONAL = "orthogonal"
_META_ATTRS = (
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "Manufacturer",
    "PhotometricInterpretation",
    "PixelSpacing",
    "SliceThickness",
    "RescaleType",
    "units",
    "series_key",
)
_SKIP_COORDS = {"SOPInstanceUID"}


class Viewer(widgets.VBox):
    """Slice viewer over a (lazy) DataArray from :func:`dicomxr.open_series`.

    Build it with :func:`dicomxr.view`. Its state is made of traits, so a script drives it
    the way a person does (and can ``observe`` it).

    Attributes
    ----------
    position : dict
        ``{dim: index}`` for every dim (extra dims, ``slice``, ``row``, ``col``), 0-based.
        The sliders and captions count from 0 too, like the index.
    level, window : float
        The display window: centre and width, in the array's units.
    preset : str
        Window preset in use (``"file 1"``, ``"brain"``, ``"auto"``..., ``"custom"`` once
        moved by hand); see :attr:`presets`.
    view : str
        Plane shown (``"axial"``, ``"coronal"``, ``"sagittal"``, or ``"slice"``, ``"row"``,
        ``"column"`` for oblique series) or ``"orthogonal"`` for the three.
    colormap : str
        Matplotlib colormap name.
    overlay_opacity : float
        Opacity of the label overlay.
    show_crosshair : bool
        Draw where the planes cut each other (three-plane view).

    Notes
    -----
    A slider step reads the frames the new picture needs and nothing else: the native
    plane is one frame; the two planes across the stack need every frame of the stack at
    the current extra index, so they are computed only when shown. Frames once read stay
    in a cache (``cache_mb``). :meth:`displayed` returns the picture on screen,
    :meth:`plane_values` the values behind it, :meth:`snapshot` a static PNG; clicking a
    plane moves the others there and the mouse wheel steps through its stack (with
    ``ipyevents``, ``pip install 'dicomxr[viewer]'``).
    """

    position = traitlets.Dict(help="index along every dim, {dim: int}")
    level = traitlets.Float(0.0, help="window centre")
    window = traitlets.Float(1.0, help="window width")
    preset = traitlets.Unicode("custom", help="name of the window preset in use")
    view = traitlets.Unicode(help="plane shown: a plane name, or 'orthogonal' for three")
    colormap = traitlets.Unicode("gray")
    overlay_opacity = traitlets.Float(0.4)
    show_crosshair = traitlets.Bool(True)

    def __init__(
        self,
        obj: Any,
        *,
        overlay: Any = None,
        view: str | None = None,
        preset: str | None = None,
        level: float | None = None,
        window: float | None = None,
        colormap: str = "gray",
        position: Mapping[str, int] | None = None,
        overlay_opacity: float = 0.4,
        size: int = 448,
        cache_mb: float = 256,
        auto_planes: int = 3,
    ) -> None:
        da = as_image(obj)
        self.volume = Volume(da, cache_bytes=int(cache_mb * 2**20))
        self.data = self.volume.da
        self.attrs: dict[str, Any] = attrs_with_affine(self.data)
        self.planes: dict[str, Plane] = planes_from_affine(self.attrs)
        self._by_name = {p.name: p for p in self.planes.values()}
        self._invert = windowing.is_inverted(self.attrs)
        # VOI function of the window in use (the preset's; the file's for a window by hand)
        self._function = voi_function(self.attrs)
        self._size = int(size)
        self._auto_planes = int(auto_planes)
        self._png = LRU(64 * 2**20)
        self._plane_cache = LRU(128 * 2**20)
        self._quiet = 0
        self._auto: dict[tuple[int, ...], windowing.Window] = {}
        self.overlay = self._check_overlay(overlay)
        self._per_frame_window = any(
            self.attrs.get(n) is None and n in self.volume._frame_coords
            for n in ("WindowCenter", "WindowWidth")
        )
        sizes = self.volume.sizes
        self._initial_position = {d: 0 for d in self.volume.extra}
        self._initial_position.update(
            {"slice": sizes["slice"] // 2, "row": sizes["row"] // 2, "col": sizes["col"] // 2}
        )
        self.presets = self._collect_presets()
        native = self.planes["slice"].name
        self._initial = {
            "view": native,
            "colormap": colormap,
            "preset": windowing.default_window({**self.attrs, **self._frame_window_attrs()}),
            "overlay_opacity": float(overlay_opacity),
        }
        super().__init__()
        self.add_class("dicomxr-viewer")
        self._build_widgets()
        with self._batch():
            self.position = {**self._initial_position, **dict(position or {})}
            self.colormap = colormap
            self.overlay_opacity = float(overlay_opacity)
            self.view = self._check_view(view or native)
            if level is not None or window is not None:
                w = self._window_for(self._initial["preset"])
                self._function = w.function
                self.level = float(level if level is not None else w.center)
                self.window = float(window if window is not None else w.width)
                self.preset = "custom"
            else:
                self._apply_preset(preset or self._initial["preset"])
        self._refresh()

    # ------------------------------------------------------------------ setup
    def _frame_window_attrs(self) -> dict[str, Any]:
        """WindowCenter/Width of the frame on screen when the loader keeps them per frame.

        Scanners may store a different window for each frame (Philips does, per volume of a
        4D series); the file's presets then follow the frame on screen, as on a scanner console.
        """
        out: dict[str, Any] = {}
        if self.position:
            extra_idx, s = self._extra_idx(), int(self.position["slice"])
        else:
            extra_idx, s = tuple(0 for _ in self.volume.extra), self.volume.sizes["slice"] // 2
        coords = self.volume.coords_at(extra_idx, s)
        for name in ("WindowCenter", "WindowWidth"):
            if self.attrs.get(name) is None and name in coords:
                out[name] = coords[name]
        return out

    def _collect_presets(self) -> dict[str, windowing.Window]:
        attrs = {**self.attrs, **self._frame_window_attrs()}
        presets = windowing.presets_for(attrs)
        return presets

    def _check_overlay(self, overlay: Any) -> Volume | None:
        if overlay is None:
            return None
        ov = Volume(as_image(overlay), cache_bytes=64 * 2**20)
        for d in SPATIAL:
            if ov.sizes[d] != self.volume.sizes[d]:
                raise ValueError(
                    f"overlay has {ov.sizes[d]} along {d!r} but the image has "
                    f"{self.volume.sizes[d]}: an overlay must lie on the image's grid"
                )
        for d in ov.extra:
            if d not in self.volume.extra or ov.sizes[d] != self.volume.sizes[d]:
                raise ValueError(
                    f"overlay dim {d!r} (size {ov.sizes[d]}) does not match the image's dims "
                    f"{dict(self.volume.sizes)}"
                )
        if ov.rgb:
            raise ValueError("an overlay holds labels or a mask, not RGB")
        return ov

    def _check_view(self, name: str) -> str:
        if name == ORTHOGONAL or name in self._by_name:
            return name
        for dim, plane in self.planes.items():  # also accept the dim it fixes
            if name == dim:
                return plane.name
        raise ValueError(f"unknown view {name!r}; choose one of {[*self._by_name, ORTHOGONAL]}")

    def _build_widgets(self) -> None:
        self._title = widgets.HTML(self._title_html())
        names = [self.planes[d].name for d in SPATIAL]
        self._view_w = widgets.ToggleButtons(
            options=[*[(n, n) for n in names], ("3 planes", ORTHOGONAL)],
            description="view",
            style={"button_width": "80px"},
        )
        self._build_window_controls()
        self._build_planes()
        self._build_sliders()
        self._meta = widgets.HTML()
        self._meta.add_class("dicomxr-metadata")
        self._meta_box = widgets.Accordion(children=[self._meta])
        self._meta_box.set_title(0, "metadata of the frame on screen")
        self._status = widgets.HTML()
        self._status.add_class("dicomxr-status")
        self._link_controls()
        self._arrange()

    def _build_window_controls(self) -> None:
        """Make the window controls: preset, level, width, colormap, reset, overlay opacity."""
        self._preset_w = widgets.Dropdown(
            options=[*self.presets, "auto", "custom"],
            description="window",
            layout={"width": "230px"},
        )
        lo, hi = self._value_span()
        # a round step with the range on its grid: the browser's slider snaps values to the
        # grid, and a preset such as 40/80 HU must not turn into 39.7 when it is touched
        step = 10.0 ** np.floor(np.log10(max(hi - lo, 1e-9) / 500.0))
        lo, hi = np.floor(lo / step) * step, np.ceil(hi / step) * step
        self._step = float(step)
        self._level_w = widgets.FloatSlider(
            min=float(lo),
            max=float(hi),
            step=self._step,
            description="level",
            readout_format=".4g",
            continuous_update=True,
        )
        self._width_w = widgets.FloatSlider(
            min=self._step,
            max=float(2 * (hi - lo)),
            step=self._step,
            description="width",
            readout_format=".4g",
            continuous_update=True,
        )
        cmaps = list(COLORMAPS)
        self._cmap_w = widgets.Dropdown(
            options=cmaps, description="colormap", layout={"width": "200px"}
        )
        self._reset_w = widgets.Button(description="reset", icon="undo", layout={"width": "90px"})
        self._reset_w.on_click(lambda _b: self.reset())
        self._opacity_w = widgets.FloatSlider(min=0, max=1, step=0.05, description="overlay")

    def _build_planes(self) -> None:
        """Make one panel per plane: a caption, the picture under a layer for the crosshair."""
        self._images: dict[str, widgets.Image] = {}
        self._captions: dict[str, widgets.HTML] = {}
        self._panels: dict[str, widgets.VBox] = {}
        self._events: list[Any] = []
        self._layers: dict[str, widgets.HTML] = {}
        self._stacks: dict[str, widgets.GridBox] = {}
        for d in SPATIAL:
            # the picture and, in the same grid cell above it, an SVG layer for the crosshair
            # (moving the crosshair then re-encodes no picture); clicks land on the layer
            img = widgets.Image(format="png", layout={"grid_area": "1 / 1 / 2 / 2", "margin": "0"})
            img.add_class("dicomxr-plane")
            img.add_class(f"dicomxr-plane-{d}")
            layer = widgets.HTML(layout={"grid_area": "1 / 1 / 2 / 2", "margin": "0"})
            layer.add_class("dicomxr-layer")
            layer.add_class(f"dicomxr-layer-{d}")
            stack = widgets.GridBox([img, layer])
            cap = widgets.HTML()
            cap.add_class(f"dicomxr-caption-{d}")
            self._images[d] = img
            self._layers[d] = layer
            self._stacks[d] = stack
            self._captions[d] = cap
            self._panels[d] = widgets.VBox([cap, stack], layout={"margin": "0 6px 0 0"})
            self._attach_click(d, layer)
        self._image_box = widgets.HBox()

    def _build_sliders(self) -> None:
        """Make a slider per spatial dim (counted from 0), a selection slider per extra dim."""
        sizes = self.volume.sizes
        self._sliders: dict[str, Any] = {}
        for d in SPATIAL:
            # counts from 0 like the index (da.isel(slice=k)), as every caption and title does
            s = widgets.IntSlider(
                min=0,
                max=sizes[d] - 1,
                description=self.planes[d].name if d != "slice" else "slice",
                continuous_update=True,
                layout={"width": "480px"},
            )
            s.add_class(f"dicomxr-slider-{d}")
            s.observe(self._on_slider(d), "value")
            self._sliders[d] = s
        self._slice_info = widgets.HTML()
        self._slice_info.add_class("dicomxr-slice-info")
        self._extra_w: dict[str, widgets.SelectionSlider] = {}
        self._extra_info: dict[str, widgets.HTML] = {}
        for d in self.volume.extra:
            options = self._extra_options(d)
            s = widgets.SelectionSlider(
                options=options, description=d, continuous_update=True, layout={"width": "480px"}
            )
            s.add_class(f"dicomxr-slider-{d}")
            s.observe(self._on_slider(d), "value")
            self._extra_w[d] = s
            self._extra_info[d] = widgets.HTML()
            self._extra_info[d].add_class(f"dicomxr-info-{d}")

    def _link_controls(self) -> None:
        """Link each control to its trait (widget -> trait)."""
        self._view_w.observe(lambda ch: setattr(self, "view", ch["new"]), "value")
        self._preset_w.observe(self._on_preset_widget, "value")
        self._level_w.observe(lambda ch: self._set_window_by_hand(level=ch["new"]), "value")
        self._width_w.observe(lambda ch: self._set_window_by_hand(window=ch["new"]), "value")
        self._cmap_w.observe(lambda ch: setattr(self, "colormap", ch["new"]), "value")
        self._opacity_w.observe(lambda ch: setattr(self, "overlay_opacity", ch["new"]), "value")

    def _arrange(self) -> None:
        """Lay the controls out: title, toolbars, planes, sliders, metadata, status."""
        toolbar = [self._view_w]
        window_row = [self._preset_w, self._level_w, self._width_w]
        style_row = [self._cmap_w, self._reset_w]
        if self.overlay is not None:
            style_row.insert(1, self._opacity_w)
        if self.volume.rgb:
            window_row = []
        self.children = [
            self._title,
            widgets.HBox(toolbar),
            widgets.HBox(window_row),
            widgets.HBox(style_row),
            self._image_box,
            widgets.VBox(),  # spatial sliders, filled by _layout()
            self._slice_info,
            widgets.VBox(
                [widgets.HBox([self._extra_w[d], self._extra_info[d]]) for d in self._extra_w]
            ),
            self._meta_box,
            self._status,
        ]

    def _attach_click(self, dim: str, layer: widgets.HTML) -> None:
        try:
            from ipyevents import Event
        except ImportError:
            logger.info(
                "ipyevents is not installed: clicking a plane will not move the others "
                "(pip install 'dicomxr[viewer]'); the sliders still do"
            )
            return
        # click: move the other planes there; wheel: step through this plane's stack (the
        # page does not scroll while the pointer is over a plane)
        ev = Event(
            source=layer,
            watched_events=["click", "wheel"],
            prevent_default_action=True,
            throttle_or_debounce="throttle",
            wait=40,  # at most one wheel step every 40 ms reaches the kernel
        )
        ev.on_dom_event(lambda event, d=dim: self._on_dom_event(d, event))
        self._events.append(ev)

    def _on_dom_event(self, dim: str, event: Mapping[str, Any]) -> None:
        if event.get("type") == "wheel":
            self._on_wheel_event(dim, event)
        else:
            self._on_click_event(dim, event)

    def _on_wheel_event(self, dim: str, event: Mapping[str, Any]) -> None:
        """Step the plane's own index by one per wheel notch (down = next)."""
        try:
            delta = float(event.get("deltaY") or 0.0)
        except (TypeError, ValueError):
            return
        if delta == 0:
            return
        n = self.volume.sizes[dim]
        new = min(max(int(self.position[dim]) + (1 if delta > 0 else -1), 0), n - 1)
        if new != self.position[dim]:
            self.position = {**self.position, dim: new}

    def _on_click_event(self, dim: str, event: Mapping[str, Any]) -> None:
        """Map a browser click (pixels from the layer's top left) to a pixel of the plane."""
        try:
            rx, ry = float(event["relativeX"]), float(event["relativeY"])
            # the picture's size on screen is the one we set; the layer's own box can be a
            # few pixels taller (line height of the HTML widget), so it is only a fallback
            bw = float(self._images[dim].width or event["boundingRectWidth"])
            bh = float(self._images[dim].height or event["boundingRectHeight"])
        except (KeyError, TypeError, ValueError):
            return
        if bw <= 0 or bh <= 0:
            return
        p = self.planes[dim]
        ny, nx = self.volume.sizes[p.vertical], self.volume.sizes[p.horizontal]
        self.click(dim, int(ry / bh * ny), int(rx / bw * nx))

    def _title_html(self) -> str:
        a = self.attrs
        parts = [
            str(a.get(k))
            for k in ("Modality", "SeriesNumber", "SeriesDescription")
            if a.get(k) not in (None, "")
        ]
        dims = " × ".join(f"{d} {n}" for d, n in self.volume.sizes.items())
        title = html.escape(" · ".join(parts) or str(self.data.name or "image"))
        lazy = "lazy" if self.volume.lazy else "in memory"
        return f"<b>{title}</b> <span style='color:#777'>({html.escape(dims)}; {lazy})</span>"

    def _value_span(self) -> tuple[float, float]:
        dtype = self.data.dtype
        lows, highs = [], []
        for w in self.presets.values():
            lows.append(w.low)
            highs.append(w.high)
        if windowing.is_ct(self.attrs):
            lows.append(-1024.0)
            highs.append(3071.0)
        if not lows:
            # no presets: read the frame on screen (it is read anyway to show it)
            extra_idx = tuple(0 for _ in self.volume.extra)
            s = self.volume.sizes["slice"] // 2
            frame = self.volume.load(extra_idx, [s])[s]
            if frame.size:
                finite = frame[np.isfinite(frame)] if frame.dtype.kind == "f" else frame
                if finite.size:
                    lows.append(float(finite.min()))
                    highs.append(float(finite.max()))
        if not lows:
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                return float(info.min), float(info.max)
            return 0.0, 1.0
        lo, hi = min(lows), max(highs)
        if not hi > lo:
            hi = lo + 1.0
        return lo, hi

    def _extra_options(self, dim: str) -> list[tuple[str, int]]:
        """Slider stops of an extra dim, labelled with its coordinate (the index without one)."""
        n = self.volume.sizes[dim]
        along = self.volume.values_along(dim)
        if dim in along:
            labels = [_fmt(v) for v in along[dim]]
        else:
            labels = [str(i) for i in range(n)]
        if len(set(labels)) < n:  # the slider needs distinct labels
            labels = [f"{i}: {lab}" for i, lab in enumerate(labels)]
        return list(zip(labels, range(n), strict=True))

    def _extra_html(self, dim: str) -> str:
        """Return the other coordinates along an extra dim at the current index (beside its slider)."""
        i = int(self.position[dim])
        along = self.volume.values_along(dim)
        bits = [
            f"{html.escape(name)}={html.escape(_fmt(values[i]))}"
            for name, values in along.items()
            if name != dim
        ]
        n = self.volume.sizes[dim]
        sep = " · " if bits else ""
        return f"<span style='color:#555'>{index_label('', i, n)}{sep}{' · '.join(bits)}</span>"

    # ------------------------------------------------------------------ traits
    @contextmanager
    def _batch(self) -> Iterator[None]:
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    @traitlets.validate("position")
    def _valid_position(self, proposal: Any) -> dict[str, int]:
        new = dict(self.position or self._initial_position)
        for dim, idx in dict(proposal["value"]).items():
            if dim not in self.volume.sizes or dim == "channel":
                raise traitlets.TraitError(
                    f"unknown dim {dim!r}; dims are {list(self.volume.sizes)}"
                )
            n = self.volume.sizes[dim]
            i = int(idx)
            if not 0 <= i < n:
                raise traitlets.TraitError(f"{dim} index {i} out of range 0..{n - 1}")
            new[dim] = i
        return new

    @traitlets.validate("view")
    def _valid_view(self, proposal: Any) -> str:
        try:
            return self._check_view(proposal["value"])
        except ValueError as exc:
            raise traitlets.TraitError(str(exc)) from None

    @traitlets.validate("colormap")
    def _valid_cmap(self, proposal: Any) -> str:
        from dicomxr.viewer.render import lut

        try:
            lut(proposal["value"])
        except ValueError as exc:
            raise traitlets.TraitError(str(exc)) from None
        return proposal["value"]

    @traitlets.validate("window")
    def _valid_window(self, proposal: Any) -> float:
        w = float(proposal["value"])
        try:
            check_width(w, self._function)
        except ValueError as exc:
            raise traitlets.TraitError(str(exc)) from None
        return w

    @traitlets.observe(
        "position", "level", "window", "view", "colormap", "overlay_opacity", "show_crosshair"
    )
    def _on_state(self, change: Any) -> None:
        if (
            change["name"] == "position"
            and self._per_frame_window
            and self.preset.startswith("file")
        ):
            w = self._window_for(self.preset)
            if (w.center, w.width) != (self.level, self.window):
                with self._batch():
                    self.level, self.window = w.center, w.width
        self._sync_widgets()
        if not self._quiet:
            self._refresh()

    def _on_slider(self, dim: str, offset: int = 0) -> Any:
        def handler(change: Any) -> None:
            index = int(change["new"]) - offset
            if self.position.get(dim) != index:
                self.position = {**self.position, dim: index}

        return handler

    def _on_preset_widget(self, change: Any) -> None:
        if change["new"] != "custom" and change["new"] != self.preset:
            self._apply_preset(change["new"])

    def _set_window_by_hand(self, level: float | None = None, window: float | None = None) -> None:
        if self._quiet:
            return
        new_level = self.level if level is None else float(level)
        new_window = self.window if window is None else float(window)
        if new_level == self.level and new_window == self.window:
            return
        with self._batch():
            self.level, self.window = new_level, new_window
            self.preset = "custom"
        self._sync_widgets()
        self._refresh()

    def _window_for(self, name: str) -> windowing.Window:
        if name == "auto":
            return self.auto_window()
        if name.startswith("file") and self._per_frame_window:
            for w in windowing.file_presets({**self.attrs, **self._frame_window_attrs()}):
                if w.name == name:
                    return w
        try:
            return self.presets[name]
        except KeyError:
            raise ValueError(
                f"unknown window preset {name!r}; choose one of {[*self.presets, 'auto']}"
            ) from None

    def _apply_preset(self, name: str) -> None:
        w = self._window_for(name)
        with self._batch():
            self._function = w.function
            self.preset = name
            self.level = w.center
            self.window = w.width
        self._sync_widgets()
        if not self._quiet:
            self._refresh()

    def set_preset(self, name: str) -> None:
        """Use a window preset by name (see :attr:`presets`, or ``"auto"``)."""
        self._apply_preset(name)

    def auto_window(self) -> windowing.Window:
        """Return the automatic window of the volume on screen, from ``auto_planes`` sampled planes.

        Computed when the ``"auto"`` preset is chosen (once per volume of a 4D series) and
        kept while the sliders move: a slider step never reads more than the frames it shows.
        """
        extra_idx = self._extra_idx() if self.position else tuple(0 for _ in self.volume.extra)
        if extra_idx not in self._auto:
            s_now = self.position.get("slice", self.volume.sizes["slice"] // 2)
            picks = windowing.sample_indices(
                self.volume.sizes["slice"], self._auto_planes, include=s_now
            )
            frames = self.volume.load(extra_idx, picks)
            self._auto[extra_idx] = windowing.auto_window(
                frames.values(), self.attrs.get("Modality")
            )
            logger.debug("auto window from slices %s: %s", picks, self._auto[extra_idx])
        return self._auto[extra_idx]

    def reset(self) -> None:
        """Back to the opening state: middle slice, first extra index, default window and view."""
        with self._batch():
            self.position = dict(self._initial_position)
            self.view = self._initial["view"]
            self.colormap = self._initial["colormap"]
            self.overlay_opacity = self._initial["overlay_opacity"]
            self._apply_preset(self._initial["preset"])
        self._sync_widgets()
        self._refresh()

    def set_position(self, **index: int) -> None:
        """Move to indices, e.g. ``v.set_position(slice=10, time=2)``."""
        self.position = {**self.position, **index}

    def sel(self, **values: Any) -> None:
        """Move to coordinate values, e.g. ``v.sel(slice=12.5, label="CONTROL")`` (nearest number).

        Each name is a dim with a dimension coordinate (``slice`` in mm, ``time``, ``echo``...).
        """
        index = {}
        for dim, value in values.items():
            if dim not in self.data.coords or self.data[dim].dims != (dim,):
                raise ValueError(f"{dim!r} has no coordinate to select on; use set_position()")
            coord = np.asarray(self.data[dim].values)
            if coord.dtype.kind in "iuf" and not isinstance(value, str):
                index[dim] = int(np.nanargmin(np.abs(coord.astype(float) - float(value))))
            else:
                hits = np.flatnonzero(coord.astype(str) == str(value))
                if not hits.size:
                    raise ValueError(f"{value!r} is not a {dim} value; values are {coord.tolist()}")
                index[dim] = int(hits[0])
        self.position = {**self.position, **index}

    def click(self, dim: str, y: Any, x: Any) -> None:
        """Act on a click at screen pixel ``(y, x)`` of the plane fixing ``dim``: move the others there."""
        if y is None or x is None:
            return
        plane = self.planes[dim]
        moved = plane.from_display(int(y), int(x), self.volume.sizes)
        self.position = {**self.position, **moved}

    # ------------------------------------------------------------------ data
    def _extra_idx(self) -> tuple[int, ...]:
        return tuple(int(self.position[d]) for d in self.volume.extra)

    def visible(self) -> list[str]:
        """Return the dims whose planes are on screen (``["slice"]`` for the native plane alone)."""
        if self.view == ORTHOGONAL:
            return list(SPATIAL)
        return [self._by_name[self.view].fixed]

    def _plane_data(self, dim: str) -> np.ndarray:
        extra_idx = self._extra_idx()
        idx = int(self.position[dim])
        key = ("img", dim, extra_idx, idx)
        hit = self._plane_cache.get(key)
        if hit is not None:
            return hit
        raw = self.volume.plane(extra_idx, dim, idx)
        shown = self.planes[dim].orient(raw, tuple(d for d in SPATIAL if d != dim))
        shown = np.ascontiguousarray(shown)
        self._plane_cache.put(key, shown)
        return shown

    def _overlay_data(self, dim: str) -> np.ndarray | None:
        if self.overlay is None:
            return None
        extra_idx = tuple(int(self.position[d]) for d in self.overlay.extra)
        idx = int(self.position[dim])
        key = ("ov", dim, extra_idx, idx)
        hit = self._plane_cache.get(key)
        if hit is not None:
            return hit
        raw = self.overlay.plane(extra_idx, dim, idx)
        shown = np.ascontiguousarray(
            self.planes[dim].orient(raw, tuple(d for d in SPATIAL if d != dim))
        )
        self._plane_cache.put(key, shown)
        return shown

    def crosshair(self, view: str | None = None) -> tuple[int, int] | None:
        """Return the screen pixel ``(y, x)`` where the crosshair crosses a plane (``None`` if hidden)."""
        dim = self._dim_of(view)
        if not self.show_crosshair or self.view != ORTHOGONAL:
            return None
        return self.planes[dim].to_display(self.position, self.volume.sizes)

    def _layer_svg(self, dim: str, width: int, height: int) -> str:
        p = self.planes[dim]
        ny, nx = self.volume.sizes[p.vertical], self.volume.sizes[p.horizontal]
        lines = ""
        cross = self.crosshair(dim)
        if cross is not None:
            y, x = cross
            style = 'stroke="#ffc400" stroke-width="1" vector-effect="non-scaling-stroke"'
            lines = (
                f'<line class="dicomxr-crosshair-h" x1="0" y1="{y + 0.5}" x2="{nx}" '
                f'y2="{y + 0.5}" {style}/>'
                f'<line class="dicomxr-crosshair-v" x1="{x + 0.5}" y1="0" x2="{x + 0.5}" '
                f'y2="{ny}" {style}/>'
            )
        return (
            f'<svg width="{width}" height="{height}" viewBox="0 0 {nx} {ny}" '
            f'preserveAspectRatio="none" style="display:block">{lines}</svg>'
        )

    def displayed(self, view: str | None = None) -> np.ndarray:
        """Return the RGB image on screen for a plane, ``(H, W, 3)`` uint8, in display orientation.

        Parameters
        ----------
        view
            A plane name (``"axial"``...) or the dim it fixes; default the main plane.
        """
        dim = self._dim_of(view)
        return render(
            self._plane_data(dim),
            center=self.level,
            width=self.window,
            cmap=self.colormap,
            invert=self._invert,
            function=self._function,
            overlay=self._overlay_data(dim),
            opacity=self.overlay_opacity,
        )

    def plane_values(self, view: str | None = None) -> Any:
        """Return the values behind a plane as a DataArray (index order, with its coordinates)."""
        dim = self._dim_of(view)
        sel = {d: int(self.position[d]) for d in self.volume.extra}
        sel[dim] = int(self.position[dim])
        raw = self.volume.plane(self._extra_idx(), dim, int(self.position[dim]))
        return self.data.isel(sel).copy(data=raw)

    def _dim_of(self, view: str | None) -> str:
        if view is None:
            return self.visible()[0]
        if view in self.planes:
            return view
        if view in self._by_name:
            return self._by_name[view].fixed
        raise ValueError(f"unknown plane {view!r}; planes are {list(self._by_name)}")

    def png(self, view: str | None = None) -> bytes:
        """PNG bytes of a plane as displayed (cached by state)."""
        dim = self._dim_of(view)
        key = (
            dim,
            self._extra_idx(),
            int(self.position[dim]),
            self.level,
            self.window,
            self._function,
            self.colormap,
            self.overlay_opacity if self.overlay is not None else None,
        )
        hit = self._png.get(key)
        if hit is None:
            if self.overlay is None and not self.volume.rgb:
                # grey levels + the colormap as palette: exact, small, fast
                idx = windowing.apply_window(
                    self._plane_data(dim),
                    self.level,
                    self.window,
                    invert=self._invert,
                    function=self._function,
                )
                hit = encode_png(idx, palette=lut(self.colormap))
            else:
                hit = encode_png(self.displayed(dim))
            self._png.put(key, hit)
        return hit

    # ------------------------------------------------------------------ screen
    def _sync_widgets(self) -> None:
        """Push trait values into the controls (without re-entering the handlers)."""
        with self._batch():
            for d, s in self._sliders.items():
                if d in self.position and s.value != self.position[d]:
                    s.value = self.position[d]
            for d, s in self._extra_w.items():
                if d in self.position and s.value != self.position[d]:
                    s.value = self.position[d]
            if self._view_w.value != self.view and self.view:
                self._view_w.value = self.view
            if self._preset_w.value != self.preset and self.preset in self._preset_w.options:
                self._preset_w.value = self.preset
            for w, v in ((self._level_w, self.level), (self._width_w, self.window)):
                if v < w.min:
                    w.min = float(np.floor(v / self._step) * self._step)
                if v > w.max:
                    w.max = float(np.ceil(v / self._step) * self._step)
                if w.value != v:
                    w.value = v
            if self.colormap in self._cmap_w.options and self._cmap_w.value != self.colormap:
                self._cmap_w.value = self.colormap
            if self._opacity_w.value != self.overlay_opacity:
                self._opacity_w.value = self.overlay_opacity

    def _refresh(self) -> None:
        """Render the planes on screen and the text around them."""
        if not self.view:
            return
        reads_before = self.volume.reads
        visible = self.visible()
        size = self._size if len(visible) == 1 else max(160, int(self._size * 0.66))
        for d in visible:
            img = self._images[d]
            img.value = self.png(d)
            w, h = self.planes[d].display_size(self.volume.sizes, size)
            if img.width != str(w) or img.height != str(h):
                img.width, img.height = str(w), str(h)
                img.layout.width, img.layout.height = f"{w}px", f"{h}px"
                self._layers[d].layout.width = f"{w}px"
                self._layers[d].layout.height = f"{h}px"
                self._stacks[d].layout.grid_template_columns = f"{w}px"
                self._stacks[d].layout.grid_template_rows = f"{h}px"
            self._layers[d].value = self._layer_svg(d, w, h)
            self._captions[d].value = self._caption(d)
        self._image_box.children = [self._panels[d] for d in visible]
        self.children[5].children = [self._sliders[d] for d in visible]
        self._slice_info.value = self._slice_html()
        for d, info in self._extra_info.items():
            info.value = self._extra_html(d)
        self._meta.value = self._meta_html()
        new_reads = self.volume.reads - reads_before
        self._status.value = (
            f"<span style='color:#777;font-size:90%'>frames read: {self.volume.reads} "
            f"(+{new_reads}); cached {self.volume.frames.nbytes / 2**20:.1f} MiB</span>"
        )

    def _caption(self, dim: str) -> str:
        p = self.planes[dim]
        n = self.volume.sizes[dim]
        oblique = f", {p.oblique_deg:.1f}° off axis" if p.oblique_deg > 0.5 else ""
        label = {"slice": "slice", "row": "row", "col": "column"}[dim]
        return (
            f"<span class='dicomxr-caption'>{html.escape(p.name)} "
            f"<span style='color:#777'>({index_label(label, self.position[dim], n)}{oblique})</span></span>"
        )

    def _slice_html(self) -> str:
        s = int(self.position["slice"])
        coords = self.volume.coords_at(self._extra_idx(), s)
        bits = [index_label("slice", s, self.volume.sizes["slice"])]
        if "slice" in self.data.coords:
            bits.append(f"{float(self.data['slice'].values[s]):.2f} mm")
        if "InstanceNumber" in coords:
            bits.append(f"InstanceNumber {_fmt(coords['InstanceNumber'])}")
        if "path" in coords:
            path = str(coords["path"])
            frame = coords.get("frame")
            name = Path(path).name + (f" [frame {_fmt(frame)}]" if frame not in (None, 0) else "")
            bits.append(f"<span title='{html.escape(path)}'>{html.escape(name)}</span>")
        for d in self.volume.extra:
            bits.append(index_label(html.escape(d), self.position[d], self.volume.sizes[d]))
        return "<span>" + " · ".join(bits) + "</span>"

    def _meta_html(self) -> str:
        rows = []
        for k in _META_ATTRS:
            v = self.attrs.get(k)
            if v not in (None, "", []):
                rows.append((k, _fmt(v)))
        coords = self.volume.coords_at(self._extra_idx(), int(self.position["slice"]))
        for k, v in coords.items():
            if k in _SKIP_COORDS:
                continue
            rows.append((k, _fmt(v)))
        r, c = int(self.position["row"]), int(self.position["col"])
        if not self.volume.rgb:
            frame = self.volume.plane(self._extra_idx(), "slice", int(self.position["slice"]))
            units = self.attrs.get("units") or ""
            rows.append((f"value at row {r}, col {c}", f"{_fmt(frame[r, c])} {units}".strip()))
        rows.append(
            ("window (level / width)", f"{self.level:.6g} / {self.window:.6g} ({self.preset})")
        )
        body = "".join(
            f"<tr><td style='padding-right:1em;color:#555'>{html.escape(str(k))}</td>"
            f"<td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return f"<table style='font-size:90%'>{body}</table>"

    def close(self) -> None:
        """Close the widget and its parts, and free the frames it keeps in memory.

        A notebook keeps every widget alive until it is closed: re-running a cell that opens
        a viewer keeps the previous one's frame cache unless it is closed.
        """
        # also called by Widget.__del__, possibly on a viewer whose __init__ failed half-way
        for cache in (
            getattr(getattr(self, "volume", None), "frames", None),
            getattr(getattr(self, "overlay", None), "frames", None),
            getattr(self, "_png", None),
            getattr(self, "_plane_cache", None),
        ):
            if cache is not None:
                cache.clear()
        parts = [*getattr(self, "_events", ()), *self.children]
        for name in ("_images", "_layers", "_stacks", "_captions", "_panels", "_sliders"):
            # planes and sliders not on screen are not among the children
            parts.extend(getattr(self, name, {}).values())
        while parts:
            w = parts.pop()
            parts.extend(getattr(w, "children", ()) or ())
            w.close()
        super().close()

    def snapshot(self) -> Any:
        """Return a static picture of what is on screen (planes, crosshair, window), as PNG.

        For pages without a live kernel, reports and scripts; see
        :func:`dicomxr.viewer.static.snapshot`.
        """
        from dicomxr.viewer.static import snapshot

        return snapshot(self)

    def __repr__(self) -> str:
        title = " · ".join(
            str(self.attrs[k])
            for k in ("Modality", "SeriesNumber", "SeriesDescription")
            if self.attrs.get(k) not in (None, "")
        )
        return (
            f"<dicomxr Viewer {title!r} {dict(self.volume.sizes)} view={self.view!r} "
            f"position={self.position} level={self.level:g} window={self.window:g} "
            f"({self.preset})>"
        )

    def _repr_png_(self) -> tuple[bytes, dict[str, int]]:
        # a static picture (at its physical aspect) where widgets cannot render
        dim = self.visible()[0]
        w, h = self.planes[dim].display_size(self.volume.sizes, self._size)
        return self.png(dim), {"width": w, "height": h}


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    if isinstance(value, np.ndarray):
        return (
            "["
            + ", ".join(_fmt(v) for v in value.ravel()[:8])
            + (", …]" if value.size > 8 else "]")
        )
    if isinstance(value, list | tuple):
        return (
            "[" + ", ".join(_fmt(v) for v in list(value)[:8]) + (", …]" if len(value) > 8 else "]")
        )
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def view(
    obj: Any,
    *,
    overlay: Any = None,
    view: str | None = None,
    preset: str | None = None,
    level: float | None = None,
    window: float | None = None,
    colormap: str = "gray",
    position: Mapping[str, int] | None = None,
    overlay_opacity: float = 0.4,
    size: int = 448,
    cache_mb: float = 256,
) -> Viewer:
    """Open an interactive viewer on a series (a widget for Jupyter, JupyterLab, VS Code, Voila).

    Only the planes on screen are computed: opening reads the one frame shown (plus, for an
    MR/PET series without a window in its files, two more planes for the automatic window).
    The planes that cut across the stack (coronal/sagittal of an axial series) need every
    frame of the stack at the current time point, so they are shown on request only
    (``view="orthogonal"``, or the "3 planes" button).

    Parameters
    ----------
    obj
        A DataArray from :func:`dicomxr.open_series` (dims ``(*extra, slice, row, col)``,
        ``affine`` attr), or a series Dataset with variable ``image``.
    overlay
        Labels or a mask on the same grid (may lack the extra dims), drawn in colour.
    view
        ``"axial"``/``"coronal"``/``"sagittal"`` (or ``"slice"``/``"row"``/``"column"`` for
        oblique series) or ``"orthogonal"`` for the three planes with a linked crosshair.
    preset, level, window
        Window preset name (the file's, CT presets, ``"auto"``) or an explicit window.
    colormap
        Any matplotlib colormap name.
    position
        Opening indices, e.g. ``{"slice": 10, "time": 2}`` (default: middle slice, first
        index of the extra dims).
    overlay_opacity
        Opacity of the overlay, 0 to 1.
    size
        Longest side of a plane on screen, in pixels.
    cache_mb
        Frames kept in memory once read, in MiB.

    Returns
    -------
    Viewer
        The widget; its traits (``position``, ``level``, ``window``, ``preset``, ``view``,
        ``colormap``) drive it from Python, :meth:`Viewer.displayed` returns the picture.

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())  # doctest: +SKIP
    >>> v = dicomxr.view(da)  # doctest: +SKIP
    >>> v.position = {**v.position, "slice": 3, "time": 1}  # doctest: +SKIP
    >>> v.displayed().shape  # doctest: +SKIP
    (96, 96, 3)
    """
    return Viewer(
        obj,
        overlay=overlay,
        view=view,
        preset=preset,
        level=level,
        window=window,
        colormap=colormap,
        position=position,
        overlay_opacity=overlay_opacity,
        size=size,
        cache_mb=cache_mb,
    )
