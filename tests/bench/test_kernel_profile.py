"""bench/harness/kernel_profile.py (device kernels by kind, busy / idle time of a step) and its rows in
bench/gpu/speed_bench.py (``--kernel-profile``), on the CPU with made-up kernels."""

from __future__ import annotations

import json

import pytest
import torch

from bench.harness import kernel_profile as kp
from bench.harness import speed as hb
from tests.bench.test_speed_rows import load_tool

# kernel names as torch.profiler reports them on an H100 (cuBLAS, PyTorch's SDPA kernels, ATen, inductor)
NAMES = {
    "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNN": "gemm",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off"
    "_kernel__5x_cublas": "gemm",
    "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>(...)": "gemm",
    "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>::Params)": (
        "attention"
    ),
    "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>(...)": "attention",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x64x128_4x1x1_kernel0_0": (
        "attention"
    ),
    "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "compiled",
    "triton_tem_fused_mm_3": "compiled",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, ...>": (
        "elementwise"
    ),
    "void at::native::(anonymous namespace)::fused_dropout_kernel_vec<c10::BFloat16, float, ...>": (
        "elementwise"
    ),
    "void at::native::indexSelectLargeIndex<float, long, unsigned int, 2, 2, -2, true>(...)": "elementwise",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, ...>>(...)": "norm/reduce",
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, ...>": "norm/reduce",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...FusedAdamMathFunctor...>": (
        "optimizer"
    ),
    "Memcpy HtoD (Pinned -> Device)": "copy",
    "Memset (Device)": "copy",
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "nccl",
    "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float, float>(...)": "other",
}


@pytest.mark.parametrize(("name", "kind"), NAMES.items())
def test_kernel_kinds_from_real_names(name: str, kind: str) -> None:
    assert kp.kernel_kind(name) == kind


def test_summary_counts_busy_time_once_where_kernels_overlap() -> None:
    # two streams overlap over 5-10 us, then the device waits 10 us for the host
    events = [
        ("nvjet_a", 0, 10),
        ("triton_poi_fused_1", 5, 20),
        ("nvjet_a", 30, 40),
        ("Memset (Device)", 38, 39),
    ]
    s = kp.summarize(events, top=2)
    assert s.kernels == 4
    assert s.span_ms == pytest.approx(0.040)
    assert s.busy_ms == pytest.approx(0.030)
    assert s.idle_ms == pytest.approx(0.010)
    assert s.by_kind_ms == pytest.approx({"gemm": 0.020, "compiled": 0.015, "copy": 0.001})
    assert s.by_kind_count == {"gemm": 2, "compiled": 1, "copy": 1}
    assert s.top == [
        ["nvjet_a", "gemm", pytest.approx(0.020), 2],
        ["triton_poi_fused_1", "compiled", 0.015, 1],
    ]
    d = s.as_dict()
    assert d["idle_ms"] == pytest.approx(0.010) and json.loads(json.dumps(d)) == d
    assert kp.summarize([]).as_dict()["kernels"] == 0


def test_kernel_table_has_a_column_per_kind_and_shows_errors() -> None:
    ok = kp.summarize([("nvjet_a", 0, 3000), ("fmha_x", 4000, 5000)]).as_dict()
    table = kp.format_kernel_table(
        [("4b/opt/b16", ok), ("4b/opt/b24", {"error": "kernel profile failed: X"})]
    )
    lines = table.splitlines()
    assert lines[1].count("|") == lines[2].count("|") == lines[3].count("|") == lines[4].count("|")
    assert all(f"{k} ms" in lines[1] for k in kp.KIND_NAMES)
    assert lines[3].startswith("| 4b/opt/b16 | 5.0 | 80.0 | 1.0 | 2 | 0.0 | 0.0 | 1.0 | 3.0 |")
    assert "kernel profile failed: X" in lines[4]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_profile_cuda_needs_a_gpu() -> None:
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        kp.profile_cuda(lambda: None)


def test_speed_bench_asks_for_and_prints_the_kernel_rows(tmp_path, monkeypatch, capsys) -> None:
    tool = load_tool()
    real_run_one, seen = hb.run_one, []

    def run_one(model, shape, cfg, samples, **kw):
        seen.append(kw["kernel_profile"])
        r = real_run_one(model, shape, cfg, samples, **kw)
        assert r.kernels == {}  # never profiled on the CPU
        r.kernels = kp.summarize([("nvjet_a", 0, 2000), ("triton_poi_fused_1", 2500, 3000)]).as_dict()
        return r

    monkeypatch.setattr(hb, "run_one", run_one)
    out = tmp_path / "rows.jsonl"
    args = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--profile-steps", "1", "--num-images", "2"]
    assert (
        tool.main([*args, "--workers", "0", "--rows", "tiny:opt2", "--kernel-profile", "--out", str(out)])
        == 0
    )
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert seen == [True] and row["kernels"]["by_kind_ms"] == pytest.approx({"gemm": 2.0, "compiled": 0.5})
    printed = capsys.readouterr().out
    assert "| tiny/opt/b2 | 3.0 | 83.3 | 0.5 | 2 |" in printed
