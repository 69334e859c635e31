"""The DICOM file laid open, byte by byte: :func:`anatomy` and :func:`compare_encodings`.

:func:`anatomy` walks a DICOM file **from its bytes** (:mod:`dicomxr.teaching.walk`, a small
parser of its own; pydicom is used only for its data dictionary, to name tags and to imply
VRs) and returns an :class:`Anatomy`: the preamble, the ``DICM`` prefix, the file meta group
and every data element with its byte offset, tag, VR, the size of its length field, its value
length and its value. Sequences and items are nested, undefined lengths end in the
delimitation items that are shown, encapsulated pixel data are listed fragment by fragment
(their bytes are never read), deflated datasets are inflated and walked with offsets *within
the inflated stream*, and a broken file is walked as far as it is sound, with the point and
nature of the break shown.

The walk tiles the file: every byte belongs to exactly one part (preamble, prefix, an
element's header, a leaf element's value, a delimiter, a fragment, trailing padding, or the
unparsed rest after a break). :meth:`Anatomy.spans` lists those parts; :meth:`Anatomy.dump`,
:meth:`Anatomy.to_html` and :meth:`Anatomy.widget` show them.

Examples
--------
>>> import dicomxr
>>> a = dicomxr.anatomy(path)  # doctest: +SKIP
>>> a.transfer_syntax, a.preamble_kind  # doctest: +SKIP
('1.2.840.10008.1.2.1', 'empty')
>>> a.to_dataframe().head()  # doctest: +SKIP
>>> print(a.dump(color=False, max_elements=20))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from dicomxr.teaching.render import EncodingComparison, render_html, render_text
from dicomxr.teaching.walk import DECODE_LIMIT, Break, FileWalk, Node, walk_file
from dicomxr.teaching.widget import AnatomyWidget

__all__ = ["Anatomy", "Break", "Node", "anatomy", "compare_encodings"]


class Anatomy(FileWalk):
    """A DICOM file laid open: every byte, who it belongs to and what it means, and its views.

    Made by :func:`anatomy`; see there. The walk itself (parts, offsets, values, breaks) is
    that of :class:`~dicomxr.teaching.walk.FileWalk`; this class adds the terminal dump, the
    annotated hex view (also the notebook display) and the widget.
    """

    def dump(
        self,
        *,
        color: bool = True,
        max_elements: int | None = None,
        offset: int | None = None,
    ) -> str:
        """Return the terminal view: offsets, coloured header bytes and what they mean.

        Parameters
        ----------
        color
            ANSI colours for the header parts (tag, VR, reserved, length, value).
        max_elements
            Parts shown at most (``None``: all).
        offset
            Start at the part covering this file offset.
        """
        return render_text(self, color=color, max_elements=max_elements, offset=offset)

    def to_html(
        self,
        *,
        max_elements: int | None = 400,
        max_value_bytes: int = 32,
        offset: int | None = None,
    ) -> str:
        """Return a self-contained annotated hex view (inline CSS, ``<details>``).

        Parameters
        ----------
        max_elements
            Parts shown at most (``None``: all of them).
        max_value_bytes
            Value bytes shown per element; the rest is elided.
        offset
            Start at the top-level part covering this file offset.
        """
        return render_html(
            self, max_elements=max_elements, max_value_bytes=max_value_bytes, offset=offset
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def widget(self) -> Any:
        """Return an ipywidgets browser: step through the elements, jump to an offset."""
        return AnatomyWidget(self).widget


def anatomy(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
    *,
    transfer_syntax: str | None = None,
    decode_limit: int = DECODE_LIMIT,
) -> Anatomy:
    """Walk a DICOM file from its bytes and lay it open.

    Parameters
    ----------
    path_or_bytes
        A file path, the file's bytes, or an open binary file (read to its end).
    transfer_syntax
        Only for a bare dataset (no preamble, no meta): the transfer syntax UID to read it
        with, instead of guessing it from its first bytes.
    decode_limit
        Values up to this many bytes are read and decoded; longer ones are shown by length
        (their bytes are not read during the walk).

    Returns
    -------
    Anatomy
        The walk; never raises for a malformed file (the break is in ``.breaks``).

    Examples
    --------
    >>> a = anatomy(pydicom.data.get_testdata_file("CT_small.dcm"))  # doctest: +SKIP
    >>> a["PatientName"].value_offset  # doctest: +SKIP
    """
    return walk_file(
        path_or_bytes, transfer_syntax=transfer_syntax, decode_limit=decode_limit, kind=Anatomy
    )


def compare_encodings(dataset_or_path: Any) -> EncodingComparison:
    """Write one dataset as implicit and explicit VR little endian and show what differs.

    Parameters
    ----------
    dataset_or_path
        A :class:`pydicom.Dataset` or a path to a DICOM file (read with pydicom).

    Returns
    -------
    EncodingComparison
        Both walks, one row per element with the bytes that differ and why; displays as a
        side-by-side table in a notebook, as text with ``print``.

    Notes
    -----
    Only the dataset is written (no preamble, no file meta), so offsets start at 0 in both.
    Encapsulated (compressed) pixel data cannot be written in implicit VR and is left out.
    """
    import copy

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    notes: list[str] = []
    if isinstance(dataset_or_path, pydicom.Dataset):
        ds = copy.deepcopy(dataset_or_path)
    else:
        ds = pydicom.dcmread(dataset_or_path, force=True)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag in ds and (
            (ts is not None and ts.is_compressed) or getattr(ds[tag], "is_undefined_length", False)
        ):
            del ds[tag]
            notes.append("encapsulated pixel data left out: implicit VR cannot carry it")
    if hasattr(ds, "file_meta"):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    # group 0002 never belongs in the dataset itself
    for elem in list(ds):
        if elem.tag.group == 2:
            del ds[elem.tag]
    blobs = {}
    for implicit in (True, False):
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = implicit
        write_dataset(fp, ds)
        blobs[implicit] = fp.getvalue()
    a_impl = anatomy(blobs[True], transfer_syntax="1.2.840.10008.1.2")
    a_expl = anatomy(blobs[False], transfer_syntax="1.2.840.10008.1.2.1")
    return EncodingComparison(a_impl, a_expl, notes)
