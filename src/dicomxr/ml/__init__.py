"""Training adapters over a converted cohort (:func:`dicomxr.convert` with ``format="zarr"``).

- :class:`dicomxr.ml.torch.ZarrSeriesDataset`: a :class:`torch.utils.data.Dataset` giving one
  sample per series or per patch (image, label if the group has one, affine, metadata).
  torch is imported only when that module is (``pip install 'dicomxr[torch]'``).
- The store is xbatcher-friendly as it is: each group is an xarray Dataset with an ``image``
  variable on ``(*frame dims, "slice", "row", "col")``, one frame per chunk, so
  ``xbatcher.BatchGenerator(xr.open_zarr(group), input_dims={...})`` cuts patches that read
  only the chunks they touch (see the conversion guide).

Nothing here imports torch on ``import dicomxr.ml``.
"""

from __future__ import annotations

__all__: list[str] = []
