"""Backends of the texture ops: one module per backend, each a plain table of its passes.

Every backend module exports

* ``TABLE``: ``{op or pass name: callable}`` on validated inputs (signatures in
  :mod:`sstkd.ops.algorithms` for the passes, the reference's for whole ops);
* ``DTYPES``: ``{name: dtypes}`` for the entries that take fewer than every float dtype;
* ``unavailable_reason(device=None) -> str | None`` (None: it runs tensors on ``device``),
  ``available_reason() -> str`` and ``ready_for_auto() -> bool`` (``"auto"`` may pick it
  without a first-use build).

:mod:`sstkd.ops.dispatch` resolves ``(op, backend, tensors) -> callable`` from these tables.
Adding a backend = one module here + its name in ``dispatch.BACKEND_MODULES``.
"""
