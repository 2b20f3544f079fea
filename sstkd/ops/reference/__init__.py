"""The PyTorch reference implementations of the texture ops (the oracle of every backend).

Plain PyTorch, validated entry points ``*_ref`` plus the unvalidated building blocks the torch
backend table (:mod:`sstkd.ops.backends.torch`) lists. Nothing here dispatches.
"""
