"""Triton kernels of the texture operators (installed as ``sstkd.kernels``).

One module per op: the ``@triton.jit`` kernels, their launchers and the
``torch.autograd.Function`` side by side. Importing a module here imports
triton; ``sstkd.ops`` does so lazily, only when the Triton backend is used.
"""
