import numpy as np

from kerasft.quantization.codebooks import (
    NF4_CODE_VALUES,
    nf4_codebook,
    nf4_max_half_gap,
    normal_float_codebook,
)


def test_nf4_table_has_16_sorted_values_with_exact_zero_and_unit_ends():
    table = nf4_codebook("float64")
    assert table.shape == (16,)
    assert np.all(np.diff(table) > 0)
    assert table[0] == -1.0 and table[7] == 0.0 and table[15] == 1.0
    assert len(NF4_CODE_VALUES) == 16


def test_nf4_table_matches_normal_quantile_construction():
    np.testing.assert_allclose(normal_float_codebook(), nf4_codebook("float64"), atol=2e-7)


def test_nf4_max_half_gap_is_half_of_the_top_gap():
    # The widest gap is at the negative end, between -1 and -0.6961928.
    np.testing.assert_allclose(nf4_max_half_gap(), (1.0 - 0.6961928009986877) / 2, rtol=1e-7)
