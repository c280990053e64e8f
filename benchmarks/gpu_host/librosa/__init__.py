"""Stand-in for the parts of librosa that rvc 0.3.5 imports (see ../README.md)."""

from . import feature, filters, util  # noqa: F401


def resample(*args, **kwargs):
    raise NotImplementedError("librosa stand-in: no resampling on this host")
