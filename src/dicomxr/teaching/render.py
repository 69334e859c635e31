"""Views of a walk (:class:`~dicomxr.teaching.walk.FileWalk`): hex view, terminal dump, side-by-side.

An annotated HTML hex view, a terminal dump, and the implicit / explicit VR side-by-side.

The HTML is self-contained: inline CSS, ``<details>`` for collapsible sequences, no
JavaScript. Stable CSS classes for the parts a reader (or a browser test) looks for:

``dxr-anatomy`` (the whole view), ``dxr-summary``, ``dxr-legend``, ``dxr-row`` (every row),
``dxr-element`` (a data element), ``dxr-sq`` (a sequence, a ``<details>``), ``dxr-item``,
``dxr-delimiter``, ``dxr-fragment``, ``dxr-offset-table``, ``dxr-preamble``, ``dxr-prefix``,
``dxr-padding``, ``dxr-break``, ``dxr-deflated``; inside a row ``dxr-off`` (offset),
``dxr-hex`` (the bytes), ``dxr-tag``, ``dxr-vr``, ``dxr-reserved``, ``dxr-len``,
``dxr-value`` (coloured byte groups), ``dxr-elided`` (bytes not shown), ``dxr-label``
(the words), ``dxr-kw`` (keyword); ``dxr-diff`` marks bytes that differ in the side-by-side.
Every row carries ``data-offset`` and, for elements, ``data-tag``.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from dicomxr.teaching.walk import FileWalk, Node

__all__ = ["EncodingComparison", "render_html", "render_text"]

CSS = """
.dxr-anatomy{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
 line-height:1.45;color:#1b1b1b;background:#fff;max-width:100%;overflow-x:auto}
.dxr-anatomy .dxr-summary{font-family:system-ui,sans-serif;font-size:13px;margin:0 0 .5em 0}
.dxr-anatomy .dxr-summary li.dxr-note{color:#7a5200}
.dxr-anatomy .dxr-summary li.dxr-break-note{color:#b00020;font-weight:600}
.dxr-anatomy .dxr-legend span{padding:0 .4em;margin-right:.3em;border-radius:3px}
.dxr-anatomy .dxr-row{display:flex;gap:1em;white-space:pre;padding:0 .2em;border-bottom:1px solid #f1f1f1}
.dxr-anatomy .dxr-row:hover{background:#fafae6}
.dxr-anatomy .dxr-off{color:#888;min-width:8ch}
.dxr-anatomy .dxr-hex{min-width:44ch;max-width:44ch;overflow:hidden;text-overflow:ellipsis}
.dxr-anatomy .dxr-label{font-family:system-ui,sans-serif;white-space:normal}
.dxr-anatomy .dxr-tag{background:#d6e9ff}
.dxr-anatomy .dxr-vr{background:#ffe3b8}
.dxr-anatomy .dxr-reserved{background:#e4e4e4;color:#777}
.dxr-anatomy .dxr-len{background:#d5f5d5}
.dxr-anatomy .dxr-value{background:#f1e0ff}
.dxr-anatomy .dxr-elided{color:#999;font-style:italic}
.dxr-anatomy .dxr-kw{font-weight:600}
.dxr-anatomy .dxr-dim{color:#777}
.dxr-anatomy .dxr-preamble .dxr-label,.dxr-anatomy .dxr-padding .dxr-label{color:#555}
.dxr-anatomy .dxr-preamble{background:#f4f4f4}
.dxr-anatomy .dxr-prefix{background:#fff4c2;font-weight:600}
.dxr-anatomy .dxr-break{background:#ffe0e0;color:#900}
.dxr-anatomy .dxr-deflated{background:#eef6ff}
.dxr-anatomy .dxr-current{outline:2px solid #f0a000}
.dxr-anatomy details{margin-left:1.2em;border-left:2px solid #d9c6ee}
.dxr-anatomy details>summary{list-style-position:outside;cursor:pointer}
.dxr-anatomy details>summary .dxr-row{display:inline-flex}
.dxr-anatomy .dxr-diff{outline:1px solid #d00;font-weight:700}
.dxr-anatomy table.dxr-compare{border-collapse:collapse}
.dxr-anatomy table.dxr-compare td,.dxr-anatomy table.dxr-compare th{border-bottom:1px solid #eee;
 padding:1px 6px;vertical-align:top;text-align:left;white-space:pre}
.dxr-anatomy table.dxr-compare td.dxr-why{white-space:normal;font-family:system-ui,sans-serif;
 min-width:28ch;max-width:48ch;font-size:11px}
"""

_KIND_CLASS = {
    "element": "dxr-element",
    "item": "dxr-item",
    "item_delimiter": "dxr-delimiter",
    "sequence_delimiter": "dxr-delimiter",
    "fragment": "dxr-fragment",
    "offset_table": "dxr-offset-table",
    "preamble": "dxr-preamble",
    "prefix": "dxr-prefix",
    "padding": "dxr-padding",
    "trailing": "dxr-padding",
    "break": "dxr-break",
    "deflated": "dxr-deflated",
}
_PART_CLASS = {
    "tag": "dxr-tag",
    "vr": "dxr-vr",
    "reserved": "dxr-reserved",
    "length": "dxr-len",
    "value": "dxr-value",
}
_ANSI = {
    "tag": "36",
    "vr": "33",
    "reserved": "90",
    "length": "32",
    "value": "35",
    "off": "90",
    "break": "1;31",
    "kw": "1",
    "note": "33",
    "prefix": "1;33",
}


@contextmanager
def _reader(a: FileWalk) -> Iterator[Callable[[int, int, str], bytes]]:
    """Open the file once for a whole rendering."""
    fh = None
    if a.source is not None and a._bytes is None:
        fh = open(a.source, "rb")

    def read(offset: int, size: int, stream: str = "file") -> bytes:
        if size <= 0:
            return b""
        if stream == "inflated":
            return (a._inflated or b"")[offset : offset + size]
        if fh is None:
            return (a._bytes or b"")[offset : offset + size]
        fh.seek(offset)
        return fh.read(size)

    try:
        yield read
    finally:
        if fh is not None:
            fh.close()


def _label(node: Node) -> str:
    """Return the words of a row, as HTML."""
    e = html.escape
    if node.kind == "element":
        vl = "undefined length (0xFFFFFFFF)" if node.undefined_length else f"{node.value_length}"
        parts = [
            f'<b class="dxr-tag-label">{e(node.tag_str)}</b>',
            f'<span class="dxr-kw">{e(node.keyword or node.name or "unknown tag")}</span>',
            f'<span class="dxr-vr-label" title="{e(node.vr_source)}">{e(node.vr or "??")}'
            f' <span class="dxr-dim">({e(node.vr_source)})</span></span>',
            f'<span class="dxr-len-label">{node.length_size}-byte length'
            f"{' + 2 reserved' if node.reserved_size else ''}: {e(vl)}</span>",
        ]
        if node.value_repr:
            parts.append(f'<span class="dxr-value-label">= {e(node.value_repr)}</span>')
        text = " · ".join(parts)
    elif node.kind in ("item", "offset_table", "fragment"):
        vl = "undefined length" if node.undefined_length else f"{node.value_length} bytes"
        what = {"item": node.name or "Item", "offset_table": "Basic Offset Table"}.get(
            node.kind, node.name or "Fragment"
        )
        text = f'<b class="dxr-tag-label">{e(node.tag_str)}</b> <span class="dxr-kw">{e(what)}</span> · {e(vl)}'
        if node.value_repr:
            text += f" · {e(node.value_repr)}"
    elif node.kind in ("item_delimiter", "sequence_delimiter"):
        text = f'<b class="dxr-tag-label">{e(node.tag_str)}</b> <span class="dxr-kw">{e(node.name)}</span>'
    elif node.kind == "preamble":
        text = f'<span class="dxr-kw">preamble</span> (128 bytes) · {e(node.value_repr)}'
    elif node.kind == "prefix":
        text = '<span class="dxr-kw">"DICM" prefix</span> · marks a DICOM Part 10 file'
    elif node.kind == "deflated":
        text = (
            f'<span class="dxr-kw">deflated dataset</span> · {e(node.value_repr)} · {e(node.note)}'
        )
    else:
        text = f'<span class="dxr-kw">{e(node.kind)}</span> · {e(node.value_repr)}'
    if node.note and node.kind not in ("preamble", "deflated"):
        text += f' <span class="dxr-dim">— {e(node.note)}</span>'
    if node.error:
        text += f' <b style="color:#b00020">— {e(node.error)}</b>'
    if node.stream == "inflated":
        text += ' <span class="dxr-dim">[offset in the inflated stream]</span>'
    return text


def _hex_html(node: Node, read: Callable[[int, int, str], bytes], max_value_bytes: int) -> str:
    chunks = []
    for part, start, stop in node.header_parts():
        data = read(start, stop - start, node.stream)
        chunks.append(f'<span class="{_PART_CLASS[part]}">{data.hex(" ")}</span>')
    if node.children or node.kind == "deflated":
        return " ".join(chunks)
    value_len = node.end - node.value_offset
    if node.kind in ("preamble", "padding", "trailing", "break"):
        shown = min(value_len, 16)
        data = read(node.value_offset, shown, node.stream)
        cls = "dxr-value"
        chunks.append(f'<span class="{cls}">{data.hex(" ")}</span>')
    elif node.kind == "prefix":
        chunks.append(
            f'<span class="dxr-value">{read(node.offset, 4, node.stream).hex(" ")}</span>'
        )
        shown = value_len
    else:
        shown = min(value_len, max_value_bytes)
        if shown:
            data = read(node.value_offset, shown, node.stream)
            chunks.append(f'<span class="dxr-value">{data.hex(" ")}</span>')
    if value_len > shown:
        chunks.append(f'<span class="dxr-elided">… {value_len - shown} more bytes</span>')
    return " ".join(chunks)


def _row(node: Node, read: Callable, max_value_bytes: int, extra_class: str = "") -> str:
    cls = f"dxr-row {_KIND_CLASS.get(node.kind, 'dxr-part')} {extra_class}".strip()
    tag = f' data-tag="{node.tag_str}"' if node.tag is not None else ""
    off = f"{node.offset:08X}" if node.stream == "file" else f"+{node.offset:07X}"
    return (
        f'<div class="{cls}" data-offset="{node.offset}" data-index="{node.index}"{tag}>'
        f'<span class="dxr-off">{off}</span>'
        f'<span class="dxr-hex">{_hex_html(node, read, max_value_bytes)}</span>'
        f'<span class="dxr-label">{_label(node)}</span></div>'
    )


def _legend() -> str:
    return (
        '<div class="dxr-legend">'
        '<span class="dxr-tag">tag</span><span class="dxr-vr">VR</span>'
        '<span class="dxr-reserved">reserved</span><span class="dxr-len">length</span>'
        '<span class="dxr-value">value</span><span class="dxr-elided">… elided</span>'
        "</div>"
    )


def _summary_html(a: FileWalk) -> str:
    e = html.escape
    lines = a.summary().splitlines()
    items = []
    for line in lines[1:]:
        cls = (
            "dxr-break-note"
            if line.startswith("BREAK")
            else ("dxr-note" if line.startswith("note:") else "")
        )
        items.append(f'<li class="{cls}">{e(line)}</li>')
    head = f"{a.source.name}: {a.size} bytes" if a.source is not None else lines[0]
    return (
        f'<div class="dxr-summary"><b title="{e(str(a.source or ""))}">{e(head)}</b>'
        f"<ul>{''.join(items)}</ul></div>"
    )


def render_html(
    a: FileWalk,
    *,
    max_elements: int | None = 400,
    max_value_bytes: int = 32,
    nodes: list[Node] | None = None,
    current: int | None = None,
    summary: bool = True,
    offset: int | None = None,
) -> str:
    """Return the annotated hex view of a walk as self-contained HTML.

    Parameters
    ----------
    a
        The walk.
    max_elements
        Rows to show at most (``None``: all); a note says how many were left out.
    max_value_bytes
        Value bytes shown per element; the rest is elided.
    nodes
        Show only these nodes (flat, no nesting): used by the widget.
    current
        Index of a node to highlight.
    summary
        Include the summary and legend.
    offset
        Start at the top-level part that covers this file offset.
    """
    out = io.StringIO()
    out.write(f'<div class="dxr-anatomy"><style>{CSS}</style>')
    if summary:
        out.write(_summary_html(a))
        out.write(_legend())
    budget = [max_elements if max_elements is not None else -1]
    with _reader(a) as read:
        if nodes is not None:
            for node in nodes:
                extra = "dxr-current" if node.index == current else ""
                out.write(_row(node, read, max_value_bytes, extra))
        else:
            for node in a.nodes:
                if offset is not None and node.stream == "file" and node.end <= offset:
                    continue
                _write_tree(out, node, read, max_value_bytes, budget)
            left = len(a) - (max_elements or 0) if budget[0] == 0 else 0
            if budget[0] == 0 and left > 0:
                out.write(
                    f'<div class="dxr-row dxr-elided">… {left} more parts not shown '
                    f"(to_html(max_elements=None) shows them all)</div>"
                )
    out.write("</div>")
    return out.getvalue()


def _write_tree(out: io.StringIO, node: Node, read: Callable, mvb: int, budget: list[int]) -> None:
    if budget[0] == 0:
        return
    budget[0] -= 1
    if not node.children:
        out.write(_row(node, read, mvb))
        return
    kind = "dxr-sq" if node.vr == "SQ" or node.kind == "element" else "dxr-container"
    open_attr = " open" if node.depth < 4 else ""
    out.write(f'<details class="{kind} {_KIND_CLASS.get(node.kind, "")}"{open_attr}><summary>')
    out.write(_row(node, read, mvb))
    out.write("</summary>")
    for child in node.children:
        _write_tree(out, child, read, mvb, budget)
    out.write("</details>")


# -- terminal -----------------------------------------------------------------------------
def _c(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and text else text


def render_text(
    a: FileWalk,
    *,
    color: bool = True,
    max_elements: int | None = None,
    offset: int | None = None,
    max_value_bytes: int = 8,
) -> str:
    """Return the terminal dump: one line per part, offsets, coloured header bytes."""
    lines = [
        _c(
            line,
            _ANSI["break"] if line.startswith("BREAK") else "0",
            color and line.startswith("BREAK"),
        )
        for line in a.summary().splitlines()
    ]
    legend = " ".join(
        _c(name, _ANSI[key], color)
        for name, key in (
            ("tag", "tag"),
            ("VR", "vr"),
            ("reserved", "reserved"),
            ("length", "length"),
            ("value", "value"),
        )
    )
    lines.append(f"bytes: {legend}")
    lines.append("")
    shown = 0
    nodes = list(a.walk())
    start_index = 0
    if offset is not None:
        hit = next(
            (
                i
                for i, n in enumerate(nodes)
                if n.stream == "file" and n.end > offset and not n.children
            ),
            None,
        )
        if hit is None:
            hit = next((i for i, n in enumerate(nodes) if n.end > offset), len(nodes))
        start_index = hit
    with _reader(a) as read:
        for node in nodes[start_index:]:
            if max_elements is not None and shown >= max_elements:
                lines.append(f"… {len(nodes) - start_index - shown} more parts (--max-elements)")
                break
            shown += 1
            off = f"{node.offset:08x}" if node.stream == "file" else f"+{node.offset:07x}"
            hexparts = []
            for part, s, e in node.header_parts():
                hexparts.append(_c(read(s, e - s, node.stream).hex(" "), _ANSI[part], color))
            plain_len = sum(3 * (e - s) for _, s, e in node.header_parts())
            if not node.children and node.kind not in ("deflated",):
                vlen = node.end - node.value_offset
                n = min(vlen, max_value_bytes)
                if n:
                    hexparts.append(
                        _c(read(node.value_offset, n, node.stream).hex(" "), _ANSI["value"], color)
                    )
                    plain_len += 3 * n
                if vlen > n:
                    hexparts.append("…")
                    plain_len += 2
            hexcol = " ".join(hexparts) + " " * max(0, 56 - plain_len)
            indent = "  " * node.depth
            desc = node.describe()
            if node.kind == "element":
                kw = node.keyword or node.name or "unknown"
                desc = desc.replace(kw, _c(kw, _ANSI["kw"], color), 1)
                desc += (
                    _c(f"  [{node.vr_source}]", "90", color) if node.vr_source != "explicit" else ""
                )
            if node.kind == "break":
                desc = _c(f"BREAK: {node.error}", _ANSI["break"], color)
            elif node.kind == "prefix":
                desc = _c("'DICM' prefix", _ANSI["prefix"], color)
            if node.note and node.kind not in ("preamble", "break"):
                desc += _c(f"  ({node.note})", _ANSI["note"], color)
            if node.error and node.kind != "break":
                desc += _c(f"  !! {node.error}", _ANSI["break"], color)
            lines.append(f"{_c(off, _ANSI['off'], color)}  {hexcol}  {indent}{desc}")
    return "\n".join(lines)


# -- implicit versus explicit ---------------------------------------------------------
class EncodingComparison:
    """One dataset written as implicit and as explicit VR little endian, element by element.

    Attributes
    ----------
    implicit, explicit
        The two walks (of the bare datasets: no preamble, no meta).
    rows
        One dict per part: ``path, tag, keyword, VR, implicit_offset, explicit_offset,
        implicit_header, explicit_header, vr_bytes, reserved_bytes, implicit_length_size,
        explicit_length_size, value_differs, why``.
    notes
        What was left out (e.g. encapsulated pixel data, which implicit VR cannot carry).
    """

    def __init__(self, implicit: FileWalk, explicit: FileWalk, notes: list[str]):
        self.implicit = implicit
        self.explicit = explicit
        self.notes = notes
        self.rows = _pair(implicit, explicit)

    @property
    def size_difference(self) -> int:
        """Bytes the explicit encoding takes more than the implicit one."""
        return self.explicit.size - self.implicit.size

    def to_dataframe(self) -> pd.DataFrame:
        """Return the rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def __str__(self) -> str:
        lines = [
            f"implicit VR little endian: {self.implicit.size} bytes; explicit VR little endian: "
            f"{self.explicit.size} bytes ({self.size_difference:+d})",
            *[f"note: {n}" for n in self.notes],
        ]
        with _reader(self.implicit) as ri, _reader(self.explicit) as rx:
            for row, ni, nx in zip(self.rows, self._inodes, self._xnodes, strict=True):
                hi = ri(ni.offset, ni.header_length, ni.stream).hex(" ")
                hx = rx(nx.offset, nx.header_length, nx.stream).hex(" ")
                lines.append(
                    f"{row['tag']:<12} {row['VR'] or '':<3} {row['keyword'][:28]:<28} "
                    f"impl {ni.offset:6d}: {hi:<24} expl {nx.offset:6d}: {hx:<36} {row['why']}"
                )
        return "\n".join(lines)

    @property
    def _inodes(self) -> list[Node]:
        return [n for n in self.implicit.walk() if n.header_length]

    @property
    def _xnodes(self) -> list[Node]:
        return [n for n in self.explicit.walk() if n.header_length]

    def to_html(self, *, max_rows: int | None = 300, max_value_bytes: int = 12) -> str:
        """Side-by-side HTML: both headers' bytes, the differing ones marked ``dxr-diff``."""
        e = html.escape
        out = io.StringIO()
        out.write(f'<div class="dxr-anatomy dxr-compare-view"><style>{CSS}</style>')
        out.write(
            f'<div class="dxr-summary"><b>The same dataset, two encodings</b>: implicit VR little '
            f"endian {self.implicit.size} bytes, explicit VR little endian {self.explicit.size} "
            f"bytes ({self.size_difference:+d}).<ul>"
            + "".join(f'<li class="dxr-note">{e(n)}</li>' for n in self.notes)
            + "</ul></div>"
        )
        out.write(_legend())
        out.write(
            '<table class="dxr-compare"><tr><th>tag</th><th>keyword</th><th>implicit VR LE</th>'
            "<th>explicit VR LE</th><th>why they differ</th></tr>"
        )
        rows = list(zip(self.rows, self._inodes, self._xnodes, strict=True))
        with _reader(self.implicit) as ri, _reader(self.explicit) as rx:
            for k, (row, ni, nx) in enumerate(rows):
                if max_rows is not None and k >= max_rows:
                    out.write(
                        f'<tr><td colspan="5" class="dxr-elided">… {len(rows) - k} more rows</td></tr>'
                    )
                    break
                cells = []
                for node, read, other in ((ni, ri, nx), (nx, rx, ni)):
                    cells.append(_compare_cell(node, read, other, max_value_bytes))
                indent = "&nbsp;" * 2 * ni.depth
                out.write(
                    f'<tr class="dxr-element" data-tag="{e(row["tag"])}"><td class="dxr-tag-label">{indent}{e(row["tag"])}</td>'
                    f'<td class="dxr-kw">{e(row["keyword"])}</td>'
                    f"<td>{cells[0]}</td><td>{cells[1]}</td>"
                    f'<td class="dxr-why">{e(row["why"])}</td></tr>'
                )
        out.write("</table></div>")
        return out.getvalue()

    def _repr_html_(self) -> str:
        return self.to_html()


def _compare_cell(node: Node, read: Callable, other: Node, mvb: int) -> str:
    other_parts = {p for p, _, _ in other.header_parts()}
    bits = [f'<span class="dxr-off">{node.offset:06X}</span>']
    for part, s, t in node.header_parts():
        data = read(s, t - s, node.stream).hex(" ")
        differs = part not in other_parts or (
            part == "length"
            and (node.length_size != other.length_size or node.value_length != other.value_length)
        )
        cls = _PART_CLASS[part] + (" dxr-diff" if differs else "")
        bits.append(f'<span class="{cls}">{data}</span>')
    if not node.children:
        vlen = node.end - node.value_offset
        n = min(vlen, mvb)
        if n:
            bits.append(
                f'<span class="dxr-value">{read(node.value_offset, n, node.stream).hex(" ")}</span>'
            )
        if vlen > n:
            bits.append(f'<span class="dxr-elided">…{vlen - n}</span>')
    return " ".join(bits)


def _why(ni: Node, nx: Node) -> tuple[str, bool]:
    reasons = []
    if nx.vr_size:
        reasons.append(f"explicit writes VR '{nx.vr}' (2 bytes), implicit implies it")
    if nx.reserved_size:
        reasons.append(f"{nx.vr}: explicit adds 2 reserved bytes before a 4-byte length")
    elif ni.kind == "element" and nx.length_size == 2:
        reasons.append("length: 2 bytes explicit, 4 implicit (both headers 8 bytes)")
    value_differs = False
    if ni.value_length != nx.value_length:
        value_differs = True
        reasons.append(
            f"length {ni.value_length} vs {nx.value_length}: the items inside differ in size"
        )
    if ni.kind == "element" and ni.vr != nx.vr:
        reasons.append(f"implicit VR implied from the dictionary as {ni.vr}, written as {nx.vr}")
    if not reasons:
        reasons.append("identical bytes")
    return "; ".join(reasons), value_differs


def _pair(implicit: FileWalk, explicit: FileWalk) -> list[dict[str, Any]]:
    ni_all = [n for n in implicit.walk() if n.header_length]
    nx_all = [n for n in explicit.walk() if n.header_length]
    if len(ni_all) != len(nx_all):
        raise ValueError(
            f"the two encodings walk into different structures ({len(ni_all)} vs {len(nx_all)} parts)"
        )
    rows = []
    for ni, nx in zip(ni_all, nx_all, strict=True):
        if ni.tag != nx.tag:
            raise ValueError(f"the encodings disagree at {ni.tag_str} / {nx.tag_str}")
        why, value_differs = _why(ni, nx)
        rows.append(
            {
                "path": nx.path,
                "kind": nx.kind,
                "tag": nx.tag_str,
                "keyword": nx.keyword or nx.name,
                "VR": nx.vr,
                "implicit_offset": ni.offset,
                "explicit_offset": nx.offset,
                "shift": nx.offset - ni.offset,
                "implicit_header": ni.header_length,
                "explicit_header": nx.header_length,
                "vr_bytes": nx.vr_size,
                "reserved_bytes": nx.reserved_size,
                "implicit_length_size": ni.length_size,
                "explicit_length_size": nx.length_size,
                "value_differs": value_differs,
                "why": why,
            }
        )
    return rows
