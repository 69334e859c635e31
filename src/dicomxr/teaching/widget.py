"""An ipywidgets browser over a walk (:class:`~dicomxr.teaching.walk.FileWalk`).

Step through the parts of a file one by one (slider, previous / next buttons), or jump to
the part that covers a byte offset. The current part is shown highlighted among its
neighbours in the annotated hex view, with all its fields below. ipywidgets is imported
only when the widget is made.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from dicomxr.teaching.render import render_html

if TYPE_CHECKING:  # pragma: no cover
    from dicomxr.teaching.walk import FileWalk, Node

__all__ = ["AnatomyWidget"]


class AnatomyWidget:
    """Step through a walk, or jump to an offset.

    Parameters
    ----------
    a
        The walk to browse.
    context
        Parts shown before and after the current one.

    Attributes
    ----------
    widget
        The ipywidgets ``VBox`` to display.
    index
        Index of the current part (in :meth:`FileWalk.walk` order).
    """

    def __init__(self, a: FileWalk, *, context: int = 4):
        try:
            import ipywidgets as w
        except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency
            from dicomxr.errors import MissingDependencyError

            raise MissingDependencyError(
                "the anatomy widget needs ipywidgets: pip install ipywidgets"
            ) from exc
        self.anatomy = a
        self.nodes: list[Node] = list(a.walk())
        self.context = context
        n = max(len(self.nodes) - 1, 0)
        self.slider = w.IntSlider(
            value=0, min=0, max=n, description="part", continuous_update=False,
            layout=w.Layout(width="60%"),
        )  # fmt: skip
        self.prev = w.Button(description="◀ previous", layout=w.Layout(width="auto"))
        self.next = w.Button(description="next ▶", layout=w.Layout(width="auto"))
        self.offset_box = w.Text(
            value="", placeholder="offset, e.g. 132 or 0x84", description="offset",
            continuous_update=False, layout=w.Layout(width="260px"),
        )  # fmt: skip
        self.jump = w.Button(description="jump", layout=w.Layout(width="auto"))
        self.message = w.HTML()
        self.view = w.HTML()
        self.detail = w.HTML()
        self.prev.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(+1))
        self.jump.on_click(lambda _: self.jump_to_text(self.offset_box.value))
        self.offset_box.observe(lambda change: self.jump_to_text(change["new"]), names="value")
        self.slider.observe(lambda change: self._show(change["new"]), names="value")
        header = w.HTML(
            f"<b>{html.escape(str(a.source or '<bytes>'))}</b>: {a.size} bytes, "
            f"{len(self.nodes)} parts"
            + (" — <b style='color:#b00020'>broken</b>" if a.breaks else "")
        )
        self.widget = w.VBox(
            [
                header,
                w.HBox([self.prev, self.slider, self.next]),
                w.HBox([self.offset_box, self.jump, self.message]),
                self.view,
                self.detail,
            ]
        )
        self._show(0)

    @property
    def index(self) -> int:
        """Index of the current part."""
        return int(self.slider.value)

    def step(self, delta: int) -> None:
        """Move ``delta`` parts forward (or back)."""
        self.slider.value = min(max(self.index + delta, 0), self.slider.max)

    def jump_to(self, offset: int, stream: str = "file") -> int:
        """Show the innermost part covering byte ``offset``; return its index."""
        best = None
        for i, node in enumerate(self.nodes):
            if node.stream == stream and node.offset <= offset < node.end:
                best = i
        if best is None:
            self.message.value = (
                f"<span style='color:#b00020'>offset {offset} is outside the file "
                f"(0..{self.anatomy.size - 1})</span>"
            )
            return self.index
        self.message.value = f"offset {offset} ({offset:#x}) is in part {best}"
        if best == self.index:
            self._show(best)
        self.slider.value = best
        return best

    def jump_to_text(self, text: str) -> None:
        """Parse ``text`` (decimal or 0x hex) and jump there."""
        if not text.strip():
            return
        try:
            offset = int(text.strip(), 0)
        except ValueError:
            self.message.value = (
                f"<span style='color:#b00020'>not an offset: {html.escape(text)!s}</span>"
            )
            return
        self.jump_to(offset)

    def _show(self, index: int) -> None:
        if not self.nodes:
            self.view.value = "<i>nothing to show: the file is empty</i>"
            return
        lo, hi = max(index - self.context, 0), min(index + self.context + 1, len(self.nodes))
        node = self.nodes[index]
        self.view.value = render_html(
            self.anatomy, nodes=self.nodes[lo:hi], current=node.index, summary=False,
            max_value_bytes=16,
        )  # fmt: skip
        self.detail.value = _detail(node)


def _detail(node: Node) -> str:
    fields: list[tuple[str, Any]] = [
        ("kind", node.kind),
        ("path", node.path),
        ("offset", f"{node.offset} ({node.offset:#x})" + (" in the inflated stream" if node.stream == "inflated" else "")),
        ("tag", node.tag_str),
        ("keyword / name", node.keyword or node.name),
        ("VR", f"{node.vr or ''} ({node.vr_source})" if node.vr else ""),
        ("header", f"{node.header_length} bytes: 4 tag + {node.vr_size} VR + {node.reserved_size} reserved + {node.length_size} length" if node.header_length else ""),
        ("value length", "undefined (0xFFFFFFFF)" if node.undefined_length else node.value_length),
        ("bytes covered", node.length),
        ("value", node.value_repr),
        ("note", node.note),
        ("error", node.error),
    ]  # fmt: skip
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td>{html.escape(str(v))}</td></tr>"
        for k, v in fields
        if v not in (None, "")
    )
    return f"<table class='dxr-detail'>{rows}</table>"
