"""The pure serving parts: engine flags, accelerator detection and declaration, model facts, fit rules."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from preflight.serving import accel as A
from preflight.serving.args import ArgsError, human_int, parse_args
from preflight.serving.fit import (
    CONTEXT_TOO_LONG, ENGINE_UNSUPPORTED, FIT_MARGIN, GPU_MEMORY_BUSY, KV_CACHE_TOO_LARGE, PARALLEL_INVALID, WEIGHTS_TOO_LARGE,
    kv_layer_bytes, pp_partitions, vllm_fit, vllm_logged_tokens,
)
from preflight.serving.model import config_facts

GiB = 2**30

LLAMA8B = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
               num_hidden_layers=32, vocab_size=128256, intermediate_size=14336, max_position_embeddings=131072, torch_dtype="bfloat16",
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192})


def llama_tensors(cfg: dict) -> dict:
    h, kvd, inter, v = cfg["hidden_size"], cfg["num_key_value_heads"] * cfg["hidden_size"] // cfg["num_attention_heads"], cfg["intermediate_size"], cfg["vocab_size"]
    t = {"model.embed_tokens.weight": ("BF16", (v, h)), "lm_head.weight": ("BF16", (v, h)), "model.norm.weight": ("BF16", (h,))}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": ("BF16", (h, h)), p + "self_attn.k_proj.weight": ("BF16", (kvd, h)),
                  p + "self_attn.v_proj.weight": ("BF16", (kvd, h)), p + "self_attn.o_proj.weight": ("BF16", (h, h)),
                  p + "mlp.gate_proj.weight": ("BF16", (inter, h)), p + "mlp.up_proj.weight": ("BF16", (inter, h)),
                  p + "mlp.down_proj.weight": ("BF16", (h, inter)), p + "input_layernorm.weight": ("BF16", (h,)),
                  p + "post_attention_layernorm.weight": ("BF16", (h,))})
    return t


# --------------------------------------------------------------------------- flags

def test_vllm_flags_as_vllm_parses_them():
    a = parse_args("vllm", "serve /models/x --tensor-parallel-size=2 -pp 2 --max_model_len 32k --gpu-memory-utilization 0.85 "
                           "--kv-cache-dtype fp8 --trust-remote-code --port 8000")
    assert a["tensor_parallel_size"] == 2 and a["pipeline_parallel_size"] == 2
    assert a["max_model_len"] == 32000 and a["gpu_memory_utilization"] == 0.85 and a["kv_cache_dtype"] == "fp8"
    assert a["trust_remote_code"] is True and a["dtype"] == "auto"  # default kept
    assert "--port" in a.ignored and "8000" in a.ignored
    assert parse_args("vllm", ["--max-model-len", "auto"])["max_model_len"] == -1
    assert parse_args("vllm", "-tp 4 -q awq")["quantization"] == "awq"
    defaults = parse_args("vllm", "")
    assert defaults["gpu_memory_utilization"] == 0.9 and defaults["block_size"] == 16 and defaults["max_model_len"] is None
    assert human_int("32K") == 32768 and human_int("25.6k") == 25600


@pytest.mark.parametrize("bad", ["--tensor-parallel-size two", "--gpu-memory-utilization 1.5", "--dtype bf16", "--max-model-len",
                                 "--kv-cache-dtype fp4", "--trust-remote-code=maybe", "-tp 0", "'unterminated"])
def test_vllm_bad_values_are_refused_with_the_flag(bad):
    with pytest.raises(ArgsError) as exc:
        parse_args("vllm", bad)
    assert str(exc.value)


def test_llama_flags_and_server_defaults():
    a = parse_args("llama.cpp", "-m /models/a.gguf -c 8192 -ngl 99 -np 2 -ctk q8_0 --cache-type-v=q4_0 --no-mmap -fa --host 0.0.0.0")
    assert (a["ctx_size"], a["gpu_layers"], a["parallel"], a["cache_type_k"], a["cache_type_v"]) == (8192, 99, 2, "q8_0", "q4_0")
    assert a["mmap"] is False and a["flash_attn"] == "on" and a["kv_unified"] is False
    d = parse_args("llama.cpp", "")
    assert d["ctx_size"] == 0 and d["parallel"] == 4 and d["kv_unified"] is True  # -np auto: 4 slots, unified cache
    assert d["gpu_layers"] == "auto" and d["cache_type_k"] == "f16" and d["mmap"] is True and d["flash_attn"] == "auto"
    assert parse_args("llama.cpp", "--n-gpu-layers all -fa off")["gpu_layers"] == "all"
    assert parse_args("llama.cpp", "-lm none")["mmap"] is False
    with pytest.raises(ArgsError):
        parse_args("llama.cpp", "-ctk q3_k")
    with pytest.raises(ArgsError):
        parse_args("tgi", "")


# --------------------------------------------------------------------------- accelerators

def test_declared_accelerators():
    a = A.parse_declared("2x80GiB,cc=9.0,name=H100")
    assert a.gpus == 2 and a.devices[0].total == 80 * GiB and a.devices[0].cc == (9, 0) and a.source == "declared"
    c = A.parse_declared("cpu,memory=16GiB")
    assert c.gpus == 0 and c.memory_limit == 16 * GiB
    m = A.parse_declared({"gpus": 1, "memory": "24G", "cc": "8.9"})
    assert m.devices[0].total == 24 * GiB
    u = A.parse_declared("amd:1x96GiB,unified")
    assert u.devices[0].vendor == "amd" and u.devices[0].unified
    for bad in ("2x", "2xlots", "1x24GiB,cc=nine", "1x24GiB,colour=red", "", {"gpus": -1, "memory": "1G"}):
        with pytest.raises(A.AcceleratorError):
            A.parse_declared(bad)


def test_nvml_values_parsed_as_the_binding_returns_them():
    raw = [(b"NVIDIA A100-SXM4-80GB", SimpleNamespace(total=85899345920, free=84500000000, used=1399345920), (8, 0)),
           ("NVIDIA A100-SXM4-80GB", SimpleNamespace(total=85899345920, free=85000000000, used=899345920), (8, 0))]
    devs = A.parse_nvml(raw)
    assert len(devs) == 2 and devs[0].name == "NVIDIA A100-SXM4-80GB" and devs[0].total == 85899345920 and devs[0].cc == (8, 0)
    assert devs[0].free == 84500000000


def test_nvml_binding_absent_or_without_driver_is_no_gpu(tmp_path):
    devs, why = A.detect_nvidia("preflight_no_such_nvml_module")
    assert devs == () and "not installed" in why
    (tmp_path / "fake_nvml.py").write_text("class NVMLError(Exception): pass\n"
                                           "def nvmlInit():\n    raise NVMLError('Driver Not Loaded')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        devs, why = A.detect_nvidia("fake_nvml")
    finally:
        sys.path.remove(str(tmp_path))
    assert devs == () and "Driver Not Loaded" in why


def test_nvml_is_not_imported_on_the_check_path():
    code = "import sys, preflight.serving.fit, preflight.serving.accel; print('pynvml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def _amd_card(root, n: int, device: str, vram: int, used: int, gtt: int) -> None:
    d = root / "class" / "drm" / f"card{n}" / "device"
    d.mkdir(parents=True)
    for name, value in (("vendor", "0x1002"), ("device", device), ("mem_info_vram_total", vram), ("mem_info_vram_used", used),
                        ("mem_info_gtt_total", gtt), ("mem_info_gtt_used", 0)):
        (d / name).write_text(f"{value}\n")


def test_amd_sysfs_discrete_and_apu(tmp_path):
    _amd_card(tmp_path, 0, "0x74a1", 206158430208, 1073741824, 135000000000)  # MI300X: 192 GiB VRAM
    (tmp_path / "class" / "drm" / "card0-DP-1").mkdir()  # connectors are not cards
    devs = A.detect_amd(tmp_path)
    assert len(devs) == 1 and devs[0].total == 206158430208 and devs[0].free == 206158430208 - 1073741824 and not devs[0].unified
    apu_root = tmp_path / "apu"
    _amd_card(apu_root, 1, "0x1586", 536870912, 100000000, 103079215104)  # Strix Halo: 512 MiB carve-out, 96 GiB GTT
    (dev,) = A.detect_amd(apu_root)
    assert dev.unified and dev.total == 103079215104
    nvidia = tmp_path / "nv"
    d = nvidia / "class" / "drm" / "card0" / "device"
    d.mkdir(parents=True)
    (d / "vendor").write_text("0x10de\n")
    assert A.detect_amd(nvidia) == ()


def test_cgroup_v2_and_v1_limits(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       24684000 kB\nMemAvailable:   20000000 kB\n")
    v2 = tmp_path / "v2"
    (v2 / "kubepods" / "pod1").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "memory.max").write_text("max\n")
    (v2 / "kubepods" / "memory.max").write_text("max\n")
    (v2 / "kubepods" / "pod1" / "memory.max").write_text(f"{8 * GiB}\n")
    (proc / "self" / "cgroup").write_text("0::/kubepods/pod1\n")
    assert A.cgroup_limit(proc, v2) == 8 * GiB
    assert A.mem_available(proc) == 20000000 * 1024
    (v2 / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert A.cgroup_limit(proc, v2) is None
    v1 = tmp_path / "v1"
    (v1 / "memory" / "docker" / "abc").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{4 * GiB}\n")
    (proc / "self" / "cgroup").write_text("9:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert A.cgroup_limit(proc, v1) == 4 * GiB
    (proc / "self" / "cgroup").write_text("4:memory:/\n")  # a cgroup namespace: the container's own root
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2 * GiB}\n")
    assert A.cgroup_limit(proc, v1) == 2 * GiB


# --------------------------------------------------------------------------- model facts and fit

def test_config_facts_as_vllm_derives_them():
    f = config_facts(LLAMA8B)
    assert (f.layers, f.heads, f.kv_heads, f.head_size) == (32, 32, 8, 128)
    assert f.derived_max_len == 131072  # llama3 rope type is not multiplied
    yarn = config_facts({**LLAMA8B, "max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                                                       "original_max_position_embeddings": 32768}})
    assert yarn.derived_max_len == 131072
    ds = config_facts({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128,
                       "num_key_value_heads": 128, "num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "vocab_size": 129280,
                       "max_position_embeddings": 163840, "torch_dtype": "bfloat16"})
    assert ds.mla and ds.head_size == 576
    g2 = config_facts({"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 3584, "num_attention_heads": 16,
                       "num_key_value_heads": 8, "head_dim": 256, "num_hidden_layers": 42, "sliding_window": 4096, "vocab_size": 256000,
                       "max_position_embeddings": 8192})
    assert g2.layer_types[:3] == ["sliding", "full", "sliding"] and g2.sliding_layers == 21
    qwen = config_facts({"model_type": "qwen2", "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2, "num_hidden_layers": 24,
                         "sliding_window": 32768, "use_sliding_window": False, "max_position_embeddings": 32768})
    assert qwen.sliding_layers == 0


def test_kv_bytes_per_token_layouts():
    tp2 = parse_args("vllm", "-tp 2")
    f = config_facts(LLAMA8B)
    assert kv_layer_bytes(f, parse_args("vllm", ""), "bfloat16") == 2 * 8 * 128 * 2
    assert kv_layer_bytes(f, tp2, "bfloat16") == 2 * 4 * 128 * 2
    assert kv_layer_bytes(f, parse_args("vllm", "--kv-cache-dtype fp8"), "bfloat16") == 2 * 8 * 128
    few = config_facts({**LLAMA8B, "num_key_value_heads": 2})
    assert kv_layer_bytes(few, parse_args("vllm", "-tp 8"), "bfloat16") == 2 * 1 * 128 * 2  # at least one KV head per rank
    ds = config_facts({"model_type": "deepseek_v2", "hidden_size": 5120, "num_attention_heads": 128, "num_hidden_layers": 60,
                       "kv_lora_rank": 512, "qk_rope_head_dim": 64})
    assert kv_layer_bytes(ds, parse_args("vllm", "-tp 8"), "bfloat16") == 576 * 2  # MLA: not split by TP
    assert pp_partitions(61, 4) == [15, 15, 16, 15]


def test_fit_good_and_bad_on_declared_gpus():
    f, t = config_facts(LLAMA8B), llama_tensors(LLAMA8B)
    h100 = A.parse_declared("1x80GiB,cc=9.0")
    ok = vllm_fit(f, t, parse_args("vllm", "--max-model-len 32768"), h100)
    assert ok.fits and ok.verdict == "fits", ok.problems
    assert abs(ok.figures["weights_bytes_per_gpu"] / GiB - 14.96) < 0.01  # vLLM logs "Loading model weights took 14.99 GiB"
    assert ok.figures["kv_bytes_per_token"] == 131072 and ok.figures["longest_context"] == 131072
    l4 = A.parse_declared("1x24GiB,cc=8.9")
    bad = vllm_fit(f, t, parse_args("vllm", "--max-model-len 131072"), l4)
    assert [p.code for p in bad.problems if p.is_error] == [KV_CACHE_TOO_LARGE]
    assert "larger than the available KV cache memory" in bad.problems[0].message and "--max-model-len" in bad.problems[0].message
    tight = vllm_fit(f, t, parse_args("vllm", f"--max-model-len {bad.figures['longest_context'] + 4000}"), l4)
    assert tight.fits and any(p.code == FIT_MARGIN for p in tight.problems)  # within the estimate: a warning, not a refusal
    small = vllm_fit(f, t, parse_args("vllm", ""), A.parse_declared("1x12GiB,cc=8.6"))
    assert any(p.code == WEIGHTS_TOO_LARGE for p in small.problems)
    auto = vllm_fit(f, t, parse_args("vllm", ""), l4)  # no --max-model-len: the model's 131072, which does not fit
    assert any(p.code == KV_CACHE_TOO_LARGE for p in auto.problems)
    fitting = vllm_fit(f, t, parse_args("vllm", "--max-model-len auto"), l4)
    assert fitting.fits  # -1: vLLM fits the length to memory itself


def test_fit_rules_from_vllm():
    f, t = config_facts(LLAMA8B), llama_tensors(LLAMA8B)
    eight = A.parse_declared("8x80GiB,cc=9.0")
    assert vllm_fit(f, t, parse_args("vllm", "-tp 8 --max-model-len 8192"), eight).fits
    heads52 = config_facts({**LLAMA8B, "num_attention_heads": 52, "hidden_size": 6656, "num_key_value_heads": 52})
    r = vllm_fit(heads52, None, parse_args("vllm", "-tp 8 --max-model-len 4096"), eight)
    assert any(p.code == PARALLEL_INVALID and "Total number of attention heads (52) must be divisible by tensor parallel size (8)" in p.message
               for p in r.problems)
    r = vllm_fit(f, t, parse_args("vllm", "-tp 4 -pp 4"), eight)
    assert any(p.code == PARALLEL_INVALID and "16 GPUs" in p.message for p in r.problems)
    r = vllm_fit(f, t, parse_args("vllm", "--max-model-len 200000"), eight)
    assert any(p.code == CONTEXT_TOO_LONG and "131072" in p.message for p in r.problems)
    t4 = A.parse_declared("1x16GiB,cc=7.5,name=Tesla T4")
    r = vllm_fit(f, None, parse_args("vllm", "--dtype bfloat16 --max-model-len 4096"), t4)
    assert any(p.code == ENGINE_UNSUPPORTED and "Bfloat16 is only supported" in p.message for p in r.problems)
    assert not any(p.code == ENGINE_UNSUPPORTED for p in vllm_fit(f, None, parse_args("vllm", "--max-model-len 4096"), t4).problems)
    fp8 = config_facts({**LLAMA8B, "quantization_config": {"quant_method": "modelopt", "producer": {"name": "modelopt"},
                                                           "quantization": {"quant_algo": "FP8"}}})
    r = vllm_fit(fp8, None, parse_args("vllm", "--max-model-len 4096"), A.parse_declared("1x80GiB,cc=8.0"))
    assert any(p.code == ENGINE_UNSUPPORTED and "Minimum capability: 89" in p.message for p in r.problems)
    assert not any(p.is_error for p in vllm_fit(fp8, None, parse_args("vllm", "--max-model-len 4096"), A.parse_declared("1x80GiB,cc=9.0")).problems)
    custom = config_facts({**LLAMA8B, "architectures": ["AcmeForCausalLM"], "auto_map": {"AutoModelForCausalLM": "m.AcmeForCausalLM"}})
    assert any(p.code == ENGINE_UNSUPPORTED and p.is_error for p in vllm_fit(custom, None, parse_args("vllm", ""), eight).problems)
    assert not any(p.is_error for p in vllm_fit(custom, None, parse_args("vllm", "--trust-remote-code --max-model-len 4096"), eight).problems)
    busy = A.Accelerator((A.Device("A100", 80 * GiB, 40 * GiB, (8, 0)),), source="nvml")
    r = vllm_fit(f, t, parse_args("vllm", "--max-model-len 8192"), busy)
    assert any(p.code == GPU_MEMORY_BUSY and "Free memory on device" in p.message for p in r.problems)


def test_logged_tokens_grouping_for_hybrid_models():
    g3 = config_facts({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 5376, "num_attention_heads": 32,
                       "num_key_value_heads": 16, "head_dim": 128, "num_hidden_layers": 62, "sliding_window": 1024,
                       "sliding_window_pattern": 6, "vocab_size": 262208, "max_position_embeddings": 131072})
    assert g3.layer_types.count("full") == 10 and g3.layer_types.count("sliding") == 52
    a = parse_args("vllm", "")
    page = 2 * 16 * 128 * 2 * 16
    # 10 full + 52 sliding: groups of 10 -> 1 + 6 groups; blocks = avail // page // 10; tokens = blocks // 7 * 16
    avail = 10 * GiB
    assert vllm_logged_tokens(g3, a, avail) == (avail // page // 10) // 7 * 16
