"""Numba CPU kernel of the dense embedding gradient (``tinygrad_sgd.ops.nn.Embedding``).

The readable specification is ``np.add.at(table, index, rows)`` (the op's array code,
which also runs on CuPy as ``cupyx.scatter_add``). ``np.add.at`` handles any index and
shape through a general, unbuffered iterator; the embedding's case -- whole rows added
at a 1-D index -- is one short loop.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, error_model="numpy", fastmath=False)
def scatter_add_rows(values, index, skip, out):
    """``out[index[m], :] += values[m, :]`` for every ``m`` (repeats add up, in order),
    except rows whose index equals ``skip`` (the padding index; -1 for none). Serial:
    two lookups of one id must not race, and a batch is a few thousand rows."""
    rows, width = values.shape
    for m in range(rows):
        target = index[m]
        if target == skip:
            continue
        for j in range(width):
            out[target, j] += values[m, j]
