"""``make gpu-check`` / ``python -m sstkd.gpucheck``: the GPU acceptance run (see :mod:`sstkd.gpucheck.run`)."""
