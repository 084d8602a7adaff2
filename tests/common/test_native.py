"""The fused aggregation kernels (common.native): built and used where they can run, bit-equal to the torch
path (the same aggregators with FEDLAB_NATIVE=0) for any thread count, and a clean fallback without them."""
import platform
import shutil

import pytest
import torch

from common import native
from common import params as P
from common.aggregate import FisherMean, MaskedMean

# Several kernel blocks, a partial last block and a tail that is not a whole SIMD vector.
NUMEL = 2 * native.BLOCK + 4099
WEIGHTS = [0.37, 1 / 3, 2.5]
CAN_BUILD = (platform.machine().lower() in ("x86_64", "amd64")
             and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and shutil.which("cc") is not None)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Kernels built into a temporary cache; state reset before and after."""
    monkeypatch.setenv("FEDLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FEDLAB_NATIVE", raising=False)
    monkeypatch.delenv("CC", raising=False)
    native.reset()
    yield tmp_path
    native.reset()


def _clients(mask_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    thetas = [torch.randn(NUMEL, generator=g) for _ in WEIGHTS]
    if mask_dtype is None:  # Fisher: nonnegative, many orders of magnitude, and 0 for every client on a few
        others = [torch.rand(NUMEL, generator=g) ** 4 for _ in WEIGHTS]
        for f in others:
            f[::7] = 0.0
    elif mask_dtype == torch.float32:  # soft masks, a third of them zero
        others = [torch.rand(NUMEL, generator=g).sub_(1 / 3).clamp_min_(0) for _ in WEIGHTS]
    else:  # 0/1, and 0-3 where the type holds it
        top = 2 if mask_dtype == torch.bool else 4
        others = [torch.randint(0, top, (NUMEL,), generator=g).to(mask_dtype) for _ in WEIGHTS]
    return thetas, others


def _aggregate(kind, thetas, others, use, monkeypatch, threads):
    """(accumulator buffers, result, share at the floor) of add_many and of add one by one, with or without
    the kernels, each on an aggregator reused after a round of other clients (reset: sums not zeroed)."""
    monkeypatch.setenv("FEDLAB_NATIVE", "1" if use else "0")
    monkeypatch.setattr(P, "op_threads", lambda numel: threads)
    native.reset()
    assert (native.library() is not None) == use, native.status()
    like = [torch.zeros(NUMEL)]
    out = []
    for how in ("many", "one by one"):
        agg = kind(like)
        agg.add_many([2 * t for t in thetas], others[::-1], WEIGHTS[::-1])  # a previous round
        agg.result() if kind is FisherMean else agg.result(like)
        agg.reset()
        if how == "many":
            agg.add_many(thetas, others, WEIGHTS)
        else:
            for t, o, w in zip(thetas, others, WEIGHTS):
                agg.add([t], [o], w)
        result = agg.result() if kind is FisherMean else agg.result([torch.full((NUMEL,), 7.0)])
        out.append(([f.clone() for f in agg.accumulators()], result[0], getattr(agg, "eps_share", None)))
    return out


@pytest.mark.skipif(not CAN_BUILD, reason="the kernels run on x86-64 with AVX2 / AVX-512 and a C compiler")
def test_kernels_build_and_are_used_here(fresh):
    assert native.library() is not None, native.status()
    assert native.status() == "fused C kernels"
    built = list(fresh.glob("kernels-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    native.reset()
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == mtime, "a second load rebuilt the cached kernels"


@pytest.mark.skipif(not CAN_BUILD, reason="the kernels run on x86-64 with AVX2 / AVX-512 and a C compiler")
@pytest.mark.parametrize("kind,mask_dtype", [(FisherMean, None), (MaskedMean, torch.bool),
                                             (MaskedMean, torch.uint8), (MaskedMean, torch.float32)])
@pytest.mark.parametrize("threads", [1, 3])
def test_kernels_bit_equal_to_torch_ops(fresh, monkeypatch, kind, mask_dtype, threads):
    thetas, others = _clients(mask_dtype)
    torch_path = _aggregate(kind, thetas, others, False, monkeypatch, 1)
    fused = _aggregate(kind, thetas, others, True, monkeypatch, threads)
    for (acc_t, res_t, share_t), (acc_f, res_f, share_f) in zip(torch_path, fused):
        for a, b in zip(acc_t, acc_f):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # the same bits, signed zeros too
        assert torch.equal(res_t.view(torch.int32), res_f.view(torch.int32))
        assert share_t == share_f
    if kind is FisherMean:
        assert 0 < fused[0][2] < 1  # some coordinates at the floor (den = 0 on every 7th), not all
    assert torch.equal(fused[0][1], fused[1][1])  # add_many == add one by one


@pytest.mark.skipif(not CAN_BUILD, reason="the kernels run on x86-64 with AVX2 / AVX-512 and a C compiler")
def test_kernels_left_to_torch_where_they_do_not_apply(fresh, monkeypatch):
    """float64 sums and int64 masks take the torch path: same results as with the kernels off."""
    thetas, masks = _clients(torch.int64)
    for use in (True, False):
        monkeypatch.setenv("FEDLAB_NATIVE", "1" if use else "0")
        native.reset()
        agg = MaskedMean([torch.zeros(NUMEL)])
        agg.add_many(thetas, masks, WEIGHTS)
        agg64 = FisherMean([torch.zeros(NUMEL)], acc_dtype=torch.float64)
        agg64.add_many(thetas, [m.float() for m in masks], WEIGHTS)
        if use:
            with_kernels = (agg.result([torch.zeros(NUMEL)])[0], agg64.result()[0])
    assert torch.equal(with_kernels[0], agg.result([torch.zeros(NUMEL)])[0])
    assert torch.equal(with_kernels[1], agg64.result()[0])


@pytest.mark.parametrize("cc,why", [("/nonexistent/cc", "no C compiler"), ("false", "build failed")])
def test_without_kernels_the_torch_path_runs(fresh, monkeypatch, cc, why):
    if not CAN_BUILD:
        pytest.skip("the kernels are off here whatever the compiler")
    monkeypatch.setenv("CC", cc)
    native.reset()
    assert native.library() is None
    assert why in native.status()
    with pytest.raises(RuntimeError, match="unavailable"):
        native.add("fisher_add", [], [], [], 0, 1)
    thetas, fishers = _clients()
    results = []
    for native_flag in ("1", "0"):  # a failed build, then switched off: the same torch path
        monkeypatch.setenv("FEDLAB_NATIVE", native_flag)
        native.reset()
        agg = FisherMean([torch.zeros(NUMEL)])
        agg.add_many(thetas, fishers, WEIGHTS)
        results.append(agg.result()[0])
    assert torch.equal(*results)
    assert not list(fresh.glob("*.so"))


def test_switched_off_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("FEDLAB_NATIVE", "0")
    native.reset()
    assert native.library() is None
    assert native.status() == "torch ops (FEDLAB_NATIVE=0)"
    assert not list(fresh.glob("*.so"))


@pytest.mark.skipif(not CAN_BUILD, reason="the kernels run on x86-64 with AVX2 / AVX-512 and a C compiler")
def test_buffers_the_kernels_cannot_read_take_the_torch_path(fresh, monkeypatch):
    """A client, an output or a fallback not in CPU memory never reaches the kernels (which would read its
    address as host memory): the torch ops run instead (and raise, or not, as they always did)."""
    like, ones, mask = [torch.zeros(NUMEL)], [torch.ones(NUMEL)], [torch.ones(NUMEL, dtype=torch.bool)]
    meta, meta_mask = [torch.empty(NUMEL, device="meta")], [torch.ones(NUMEL, dtype=torch.bool, device="meta")]
    fisher, masked = FisherMean(like), MaskedMean(like)
    fisher.add(like, ones, 1.0)  # something to take the result of (with Fisher information)
    masked.add(like, mask, 1.0)

    def reached(*args, **kwargs):
        raise AssertionError("a kernel was handed these buffers")
    for name in ("add", "fisher_result", "masked_result"):
        monkeypatch.setattr(native, name, reached)
    for call in (lambda: fisher.add(like, ones, 1.0), lambda: masked.add(like, mask, 1.0),
                 lambda: fisher.result(), lambda: masked.result(like)):
        with pytest.raises(AssertionError):  # CPU buffers do reach them
            call()
    for call in (lambda: fisher.add(meta, like, 1.0), lambda: masked.add(like, meta_mask, 1.0),
                 lambda: fisher.add_many([meta[0], like[0]], [like[0]] * 2),
                 lambda: fisher.result(meta), lambda: masked.result(meta, out=meta),
                 lambda: masked.result(like, out=meta)):
        try:
            call()
        except (RuntimeError, NotImplementedError, ValueError):  # the torch ops' own errors
            pass
