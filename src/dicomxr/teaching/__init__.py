"""Teaching tools: the DICOM file laid open, and why slice order and geometry matter.

- :mod:`dicomxr.teaching.anatomy` - :func:`dicomxr.anatomy`, a file walked byte by byte
  (:mod:`.walk`), with its views (:mod:`.render`, the :mod:`.widget`) and
  :func:`~dicomxr.teaching.anatomy.compare_encodings`;
- :mod:`dicomxr.teaching.explain` - the geometry explainers (``dicomxr.explain``);
- :mod:`dicomxr.teaching.cli` - the ``dicomxr anatomy FILE`` command.

The functions are reached from the package itself (``dicomxr.anatomy(path)``,
``dicomxr.explain.slice_positions(da)``); nothing is imported until it is used.
"""
