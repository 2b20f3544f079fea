"""Texture operators: functional API with backend dispatch, plus nn.Module wrappers.

See ``docs/api.md`` for signatures; every op takes ``backend="auto"``. Each op is described
once in :mod:`sstkd.ops.specs`; the layers (reference, algorithms, backend tables, dispatch)
and how to add an op or a backend: ``docs/architecture.md``.
"""
from sstkd.ops.dispatch import backend_status, resolve_backend  # noqa: F401
from sstkd.ops.laplacian import LaplacianPyramid, lp_dec, lp_rec  # noqa: F401
from sstkd.ops.dfb import DirectionalFilterBank, dfb_dec, dfb_rec  # noqa: F401
from sstkd.ops.contourlet import (  # noqa: F401
    Contourlet,
    check_contourlet_size,
    contourlet_band_shapes,
    contourlet_dec,
    contourlet_energy,
    contourlet_rec,
    contourlet_required_multiple,
)
from sstkd.ops.quantize import QuantizeCount, cooccurrence, quantize_count, reproject  # noqa: F401
from sstkd.ops import selfcheck  # noqa: F401,E402  (installs auto's first-use self-check in dispatch)
