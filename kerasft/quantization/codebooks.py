"""The NormalFloat-4 (NF4) code book of QLoRA (Dettmers et al., 2023).

NF4 places its 16 levels at quantiles of a standard normal distribution,
rescaled to [-1, 1], with an exact zero: 8 levels for the positive half and
7 for the negative half (the asymmetric split is what gives zero a code). A
weight group is stored as 4-bit indices into this table plus one absmax scale.
"""

import statistics

import numpy as np

# The table as published with the paper (bitsandbytes `create_normal_map`),
# rounded to float32. Index 7 is exactly 0; indices 0 and 15 are -1 and 1.
NF4_CODE_VALUES = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


def nf4_codebook(dtype: str = "float32") -> np.ndarray:
    """The 16 NF4 values, ascending, as a numpy array.

    Args:
        dtype: numpy dtype of the returned array.

    Returns:
        A `(16,)` array from -1 to 1 with an exact 0 at index 7.
    """
    return np.asarray(NF4_CODE_VALUES, dtype=dtype)


def normal_float_codebook(offset: float = 0.9677083) -> np.ndarray:
    """Recomputes the NF4 table from normal quantiles (the paper's recipe).

    The positive half takes the normal quantiles of 9 evenly spaced
    probabilities from `offset` down to 0.5, the negative half those of 8;
    both drop the 0.5 point, a single 0 is added, and the table is divided by
    its largest magnitude.

    Args:
        offset: the outermost probability; the paper's
            `0.5 * (1/(2*15) + 1 - 1/(2*16))`-style choice is 0.9677083.

    Returns:
        A `(16,)` float64 array, equal to `nf4_codebook()` to ~1e-7.
    """
    normal = statistics.NormalDist()
    positive = [normal.inv_cdf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    negative = [-normal.inv_cdf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    values = np.sort(np.asarray(positive + [0.0] + negative, dtype="float64"))
    return values / np.abs(values).max()


def nf4_max_half_gap() -> float:
    """Half of the largest gap between adjacent NF4 values.

    Round-to-nearest into the table errs by at most this much on a value in
    [-1, 1], so an NF4 group with absmax `a` errs by at most `a *` this.
    """
    return float(np.max(np.diff(nf4_codebook("float64"))) / 2.0)
