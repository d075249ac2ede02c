"""The CPU kNN's bfloat16 first tier (issue 27): candidates from bfloat16
products, certified by a rigorous rounding bound, uncertified rows passed on
to the float32 tier. These tests force the tier on, so they run (slowly, the
products emulated) on CPUs without bfloat16 units too; lists and distances
must be those of the float64 brute force and, bit for bit, those of the run
without the tier."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import bruteforce_knn_f64

import fastconvex as fc
from fastconvex.kernels.numba import knn_bf16
from fastconvex.kernels.numba.knn import knn


def _gaussian_classes(n=900, d=48, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * (3.0 / math.sqrt(d))
    return (centres[rng.integers(0, classes, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _tight_clusters(n=900, d=48, clusters=6, seed=0, noise=1e-3):
    """Within-cluster distances small against the norms: the bfloat16 rounding
    of the data is larger than the gaps between a row's neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return (centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def _both(x, k, **kw):
    with_tier: dict[str, int] = {}
    without: dict[str, int] = {}
    on = knn(x, k, bf16=True, tiers=with_tier, **kw)
    off = knn(x, k, bf16=False, tiers=without, **kw)
    return on, off, with_tier, without


def _assert_same(on, off, x, k, brute=True):
    np.testing.assert_array_equal(on[0], off[0])
    np.testing.assert_array_equal(on[1], off[1])
    if brute:
        ref_i, ref_d = bruteforce_knn_f64(x, k)
        np.testing.assert_array_equal(on[0], ref_i)
        np.testing.assert_allclose(on[1], ref_d, rtol=1e-12)


def test_certifies_every_row_on_gaussian_classes():
    x = _gaussian_classes()
    on, off, tiers, without = _both(x, 10)
    assert tiers["bf16"] == x.shape[0] and tiers["float32"] == 0
    assert without["bf16"] == 0 and without["float32"] == x.shape[0]
    _assert_same(on, off, x, 10)


def test_certifies_no_row_on_tight_clusters_and_the_float32_tier_takes_them():
    x = _tight_clusters()
    on, off, tiers, _ = _both(x, 10)
    assert tiers["bf16"] == 0 and tiers["float32"] + tiers["float64"] + tiers["exact"] == x.shape[0]
    _assert_same(on, off, x, 10)


def test_mixed_clusters_certify_some_rows_with_ties_and_duplicates():
    rng = np.random.default_rng(4)
    spread = _gaussian_classes(n=500, seed=1)
    # tight enough to defeat the bfloat16 bound, not the float32 one
    tight = _tight_clusters(n=400, seed=2, noise=3e-2)
    dup = np.repeat(spread[:40], 3, axis=0)  # exact duplicates, three copies each
    grid = rng.integers(-2, 3, (150, 48)).astype(np.float32) * 0.5 + 9.0  # exact ties
    x = np.concatenate([spread, tight, dup, grid])
    x = x[rng.permutation(x.shape[0])]
    on, off, tiers, _ = _both(x, 7)
    assert 0 < tiers["bf16"] < x.shape[0]
    assert tiers["float32"] > 0
    _assert_same(on, off, x, 7)


def _scaled(x):
    """The data as the kNN feeds its tiers: centred, scaled by a power of two, float32."""
    dim = x.shape[1]
    centred = x - x.mean(axis=0, dtype=np.float64)
    c_max = float(np.abs(centred).max())
    scale = 2.0 ** (-math.frexp(c_max * math.sqrt(dim))[1]) if c_max > 0 else 1.0
    return np.ascontiguousarray((centred * scale).astype(np.float32)), scale


def _operands(x):
    """The tier's operands of ``x`` as the kNN builds them, and the scale."""
    xf, scale = _scaled(x)
    return knn_bf16.Bf16Operands(xf, np.sqrt(np.einsum("ij,ij->i", xf, xf, dtype=np.float64))), scale


ADVERSARIAL = {
    "gaussian": lambda rng: rng.normal(size=(160, 40)),
    # two clusters far from the mean: norms large against the distances
    "far apart": lambda rng: np.concatenate(
        [rng.normal(size=(80, 40)) * 1e-3 + 50, rng.normal(size=(80, 40)) * 1e-3 - 50]
    ),
    # cancellation: a large common offset, small differences
    "offset": lambda rng: 1e4 + rng.normal(size=(160, 40)) * 1e-2,
    "nearly parallel": lambda rng: np.outer(rng.random(160) * 3 + 100, np.ones(40)) + rng.normal(size=(160, 40)) * 1e-4,
    # float32 and bfloat16 subnormals, magnitudes across 35 decades
    "tiny": lambda rng: rng.normal(size=(160, 40)) * 1e-40,
    "mixed magnitudes": lambda rng: rng.normal(size=(160, 40)) * np.logspace(-30, 5, 40),
    "exactly bfloat16": lambda rng: (
        torch.randn(160, 40, generator=torch.Generator().manual_seed(1)).bfloat16().double().numpy()
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_the_bound_holds_for_every_pair(case, dtype):
    """The limit the tier computes from a bfloat16 squared distance, taken as
    if that pair were the heap root, never exceeds the pair's exact distance:
    every pair, not only the non-candidates of one row."""
    x = ADVERSARIAL[case](np.random.default_rng(7)).astype(dtype)
    ops, scale = _operands(x)
    bits = torch.mm(ops.row_block(torch.arange(x.shape[0])), ops.cols.T).view(torch.int16).numpy()
    keys = np.maximum(bits.astype(np.int32), 0)
    x64 = x.astype(np.float64) * scale
    n = x.shape[0]
    tightest = 0.0
    for i in range(n):
        limit = np.delete(ops.limit(np.full(n, i), keys[i]), i)
        exact = np.delete(np.sqrt(((x64[i] - x64) ** 2).sum(axis=1)), i)
        assert np.all(limit <= exact), (case, i)
        pos = exact > 0
        tightest = max(tightest, float(np.max(limit[pos] / exact[pos], initial=0.0)))
    # not vacuous: the bound lets limits come within 1 % of the distances
    assert tightest > 0.99


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(60, 160),  # more points than the tier keeps candidates: the bound decides
    d=st.integers(1, 24),
    k=st.integers(1, 12),
    spread=st.sampled_from([0.0, 1e-3, 1.0, 30.0, 1e4]),
    grid=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_tier_never_changes_a_list(n, d, k, spread, grid, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d)) * spread
    x = centres[rng.integers(0, 4, n)] + (rng.integers(-2, 3, (n, d)) * 0.25 if grid else rng.normal(size=(n, d)))
    k = min(k, n - 1)
    on, off, _, _ = _both(x.astype(np.float32), k)
    _assert_same(on, off, x, k, brute=False)


def test_query_blocks_and_progress_with_the_tier():
    x = _gaussian_classes(n=700)
    full_i, full_d, _ = knn(x, 6, bf16=True)
    block_i, block_d, _ = knn(x, 6, bf16=True, rows=(123, 456), block_rows=50, block_cols=97)
    np.testing.assert_array_equal(block_i, full_i[123:456])
    np.testing.assert_array_equal(block_d, full_d[123:456])
    calls = []
    knn(_tight_clusters(n=700), 6, bf16=True, block_rows=128, progress=lambda d, t: calls.append((d, t)))
    # the bfloat16 pass counts the 700 rows, the float32 pass adds the 700 it retakes
    assert calls[0] == (128, 700) and calls[-1] == (1400, 1400)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


TINY = 2.0**-126


def _round_down_f32_ftz(v):
    """float64 -> float32 rounded toward -inf, results below float32's normal
    range flushed to zero (the most hostile accumulator the bound allows)."""
    f = v.astype(np.float32)
    f = np.where(f.astype(np.float64) > v, np.nextafter(f, np.float32(-np.inf)), f)
    return np.where(np.abs(f) < TINY, np.float32(0), f)


def _to_bf16(v, up=False):
    """float32 values to bfloat16 (as float64): to nearest even, or rounded up."""
    t = torch.from_numpy(v.astype(np.float32)).bfloat16()
    if up:
        bits = t.view(torch.int16).numpy().astype(np.int32)
        below = t.double().numpy() < v
        bumped = np.where(v >= 0, bits + 1, bits - 1).astype(np.int16)
        t = torch.from_numpy(np.where(below, bumped, bits.astype(np.int16))).view(torch.bfloat16)
    return t.double().numpy()


def _violations_under_emulated_hardware(x, output_up):
    """Pairs whose limit exceeds their exact distance when the product is
    computed by an emulated accumulator: inputs and results below float32's
    normal range flushed to zero, every addition rounded toward -inf, the
    result rounded to bfloat16 to nearest (or, as a control, up)."""
    ops, scale = _operands(x)
    n = x.shape[0]
    a = ops.row_block(torch.arange(n)).double().numpy()
    c = ops.cols.double().numpy()
    a = np.where(np.abs(a) < TINY, 0.0, a)
    c = np.where(np.abs(c) < TINY, 0.0, c)
    x64 = x.astype(np.float64) * scale
    bad = 0
    for i in range(n):
        acc = np.zeros(n, np.float32)
        for t in range(a.shape[1]):  # products are exact in float64
            acc = _round_down_f32_ftz(acc.astype(np.float64) + a[i, t] * c[:, t])
        out = _to_bf16(acc, up=output_up)
        keys = np.maximum(
            torch.from_numpy(out.astype(np.float32)).bfloat16().view(torch.int16).numpy().astype(np.int32), 0
        )
        limit = np.delete(ops.limit(np.full(n, i), keys), i)
        exact = np.delete(np.sqrt(((x64[i] - x64) ** 2).sum(axis=1)), i)
        bad += int(np.sum(limit > exact))
    return bad


@pytest.mark.parametrize("case", ["gaussian", "offset", "tiny", "mixed magnitudes"])
def test_the_bound_holds_on_the_most_hostile_accumulator_it_allows(case):
    x = ADVERSARIAL[case](np.random.default_rng(11))[:100, :20]
    assert _violations_under_emulated_hardware(x, output_up=False) == 0


def test_the_emulation_catches_a_result_rounded_up():
    """Control: the emulation is sharp enough to see the one rounding the bound
    does not allow (the result rounded up to bfloat16)."""
    x = ADVERSARIAL["gaussian"](np.random.default_rng(11))[:100, :20]
    assert _violations_under_emulated_hardware(x, output_up=True) > 0


def _mm_rounding_up(a, b):
    exact = (a.double() @ b.double()).numpy()
    return torch.from_numpy(_to_bf16(exact.astype(np.float32), up=True)).to(torch.bfloat16)


def _mm_bf16_accumulator(a, b):
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.bfloat16)
    for t in range(a.shape[1]):
        acc = (acc.float() + a[:, t : t + 1].float() * b[t : t + 1, :].float()).bfloat16()
    return acc


@pytest.mark.parametrize("bad_mm", [_mm_rounding_up, _mm_bf16_accumulator])
def test_a_product_the_bound_does_not_cover_turns_the_tier_off(monkeypatch, bad_mm):
    width = knn_bf16.operand_width(24)
    assert knn_bf16.products_are_sound(width)
    knn_bf16.products_are_sound.cache_clear()
    monkeypatch.setattr(torch, "mm", bad_mm)
    try:
        assert not knn_bf16.products_are_sound(width)
        x = _gaussian_classes(n=200, d=24)
        tiers: dict[str, int] = {}
        with pytest.warns(RuntimeWarning, match="bfloat16 kNN tier is off"):
            got = knn(x, 5, bf16=True, tiers=tiers)
        assert tiers["bf16"] == 0
    finally:
        monkeypatch.undo()
        knn_bf16.products_are_sound.cache_clear()
    _assert_same(got, knn(x, 5, bf16=False), x, 5)


@pytest.fixture
def fast_bf16_cpu(monkeypatch):
    """Pretend the CPU has bfloat16 units and make small problems count as large."""
    monkeypatch.setattr(knn_bf16, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(knn_bf16, "MIN_WORK", 0)
    monkeypatch.setattr(knn_bf16, "PROBE_ROWS", 64)
    monkeypatch.delenv(knn_bf16.ENV_VAR, raising=False)


def test_automatic_keeps_the_tier_where_the_probe_certifies(fast_bf16_cpu):
    x = _gaussian_classes()
    tiers: dict[str, int] = {}
    got = knn(x, 10, tiers=tiers)
    assert tiers["bf16"] == x.shape[0]
    _assert_same(got, knn(x, 10, bf16=False), x, 10)


def test_automatic_skips_the_tier_after_a_failed_probe(fast_bf16_cpu):
    x = _tight_clusters()
    tiers: dict[str, int] = {}
    calls = []
    got = knn(x, 10, tiers=tiers, block_rows=100, progress=lambda d, t: calls.append((d, t)))
    assert tiers["bf16"] == 0  # only the probe's 64 rows took a bfloat16 pass
    assert calls[-1][0] == calls[-1][1] == x.shape[0] + 64
    _assert_same(got, knn(x, 10, bf16=False), x, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("tight_share", "kept"), [(0.25, True), (0.8, False)])
def test_automatic_with_some_rows_failing(fast_bf16_cpu, dtype, tight_share, kept):
    """A probe kept although some of its rows fail, and a probe turned down
    although some certify; float64 input; a query block through the probe."""
    rng = np.random.default_rng(9)
    n_tight = int(900 * tight_share)
    x = np.concatenate(
        [_gaussian_classes(n=900 - n_tight, seed=3), _tight_clusters(n=n_tight, clusters=2, seed=4, noise=3e-2)]
    )
    x = x[rng.permutation(900)].astype(dtype)
    tiers: dict[str, int] = {}
    got = knn(x, 8, tiers=tiers)
    off = knn(x, 8, bf16=False)
    _assert_same(got, off, x, 8)
    assert sum(tiers.values()) == 900
    if kept:
        assert 0 < tiers["float32"] < tiers["bf16"]
    else:
        assert 0 < tiers["bf16"] < 64 and tiers["float32"] > 0
    block = knn(x, 8, rows=(101, 777), block_rows=90)
    np.testing.assert_array_equal(block[0], off[0][101:777])
    np.testing.assert_array_equal(block[1], off[1][101:777])


def test_automatic_never_tries_it_without_bfloat16_units(monkeypatch):
    monkeypatch.setattr(knn_bf16, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(knn_bf16, "MIN_WORK", 0)
    monkeypatch.delenv(knn_bf16.ENV_VAR, raising=False)
    tiers: dict[str, int] = {}
    knn(_gaussian_classes(n=300), 5, tiers=tiers)
    assert tiers["bf16"] == 0 and tiers["float32"] == 300


@pytest.mark.parametrize(
    ("value", "has_units", "used"), [("on", False, True), ("off", True, False), ("", False, False)]
)
def test_the_environment_variable_forces_it(monkeypatch, value, has_units, used):
    monkeypatch.setattr(knn_bf16, "cpu_has_fast_bf16", lambda: has_units)
    monkeypatch.setattr(knn_bf16, "MIN_WORK", 0)
    monkeypatch.setenv(knn_bf16.ENV_VAR, value)
    tiers: dict[str, int] = {}
    knn(_gaussian_classes(n=300), 5, tiers=tiers)
    assert (tiers["bf16"] == 300) is used


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", "x86_64", True),
        ("fpu sse avx2 amx_bf16 amx_tile amx_int8", "x86_64", True),
        ("fpu sse avx2 avx512f avx512bw", "x86_64", False),  # AVX-512 without BF16: emulated
        ("fp asimd bf16 i8mm", "aarch64", True),
        ("fp asimd", "aarch64", False),
    ],
)
def test_cpu_flags(monkeypatch, tmp_path, flags, machine, expected):
    key = "Features" if machine == "aarch64" else "flags"
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n")
    monkeypatch.setattr(knn_bf16, "CPUINFO", str(info))
    monkeypatch.setattr(knn_bf16.platform, "machine", lambda: machine)
    knn_bf16.cpu_has_fast_bf16.cache_clear()
    try:
        assert knn_bf16.cpu_has_fast_bf16() is expected
        monkeypatch.setattr(knn_bf16, "CPUINFO", str(tmp_path / "missing"))
        knn_bf16.cpu_has_fast_bf16.cache_clear()
        assert knn_bf16.cpu_has_fast_bf16() is False
    finally:
        knn_bf16.cpu_has_fast_bf16.cache_clear()


def test_layer_scores_with_the_tier_forced_equal_the_naive_scorer(monkeypatch):
    x, y = fc.datasets.overlapping_classes(400, 24, 4, seed=3)
    monkeypatch.setenv(knn_bf16.ENV_VAR, "on")
    forced = fc.graph_convexity(x, y, k=6, exact=True, backend="numba")
    naive = fc.graph_convexity(x, y, k=6, exact=True, backend="naive")
    assert abs(forced.score - naive.score) <= 1e-12


@pytest.mark.parametrize("value", ["off", 1, 0.0])
def test_a_bf16_argument_that_is_not_a_bool_is_refused(value):
    with pytest.raises(TypeError, match="bf16 must be True, False or None"):
        knn(_gaussian_classes(n=50, d=4), 3, bf16=value)
