"""Numba kernels (private ``@njit`` functions taking only arrays and scalars).

``fff``: FFF hard routing and leaf evaluation. The validating, dispatching public layer is ``fffcpu.engine``;
the NumPy references are the ``*_reference`` methods of the models and ``tests/naive.py``.
Importing this package compiles nothing: kernels compile (or load from Numba's on-disk cache) on first use
or in ``fffcpu.warmup()``.
"""
