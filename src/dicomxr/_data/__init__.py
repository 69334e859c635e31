"""Package data: archives of the embedded sample series (see :mod:`dicomxr.data`)."""
