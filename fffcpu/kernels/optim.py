"""Fused optimizer updates: one pass over the arrays instead of one NumPy pass per operation."""

import math

from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def adam_step(param, grad, m, v, lr_over_c1, beta1, beta2, inv_sqrt_c2, eps, weight_decay):
    """Adam in place on flat (1-D, contiguous) arrays, every element at the same step.

    ``θ -= lr/c1 · m / (sqrt(v)/sqrt(c2) + eps)`` with ``m, v`` updated first; ``c1, c2`` are the bias
    corrections ``1 - beta**t``.

    ``error_model="numpy"``: a division follows IEEE 754 instead of testing for a zero divisor first (the
    denominator is at least ``eps > 0``). Without that test in the loop LLVM vectorizes it (measured: 5x faster on
    115k float32 parameters); every operation is still one correctly rounded IEEE operation per element, so the
    results are the same bits.
    """
    for i in range(param.size):
        g = grad[i] + weight_decay * param[i]
        mi = beta1 * m[i] + (1 - beta1) * g
        vi = beta2 * v[i] + (1 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= lr_over_c1 * mi / (math.sqrt(vi) * inv_sqrt_c2 + eps)
