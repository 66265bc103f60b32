"""xfed.models.quantization: THUDM's int4/int8 arithmetic, LoRA / P-tuning on the packed base, bad folders."""
from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from xfed.errors import ModelError
from xfed.models import load_pretrained, make_peft_model
from xfed.models.quantization import QuantizedLinear, dequantize, pack_int4, quantize, unpack_int4

from ._helpers import FIXTURES, make_thudm_folder


def _make_folder_module():
    spec = importlib.util.spec_from_file_location("chatglm_make_folder_q", FIXTURES / "make_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nibble_order_is_thudms_even_column_high_two_complement():
    q = torch.tensor([[-7, 7, 1, -1, 0, -8]], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.view(torch.uint8).tolist() == [[0x97, 0x1F, 0x08]]
    assert torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("qdtype", ["float32", "float16"])
def test_quantize_is_byte_identical_to_the_fixture_generators_thudm_arithmetic(bits, qdtype):
    ref = _make_folder_module()
    torch.manual_seed(bits)
    w = (torch.randn(48, 64) * torch.linspace(0.01, 3, 48)[:, None]).half()
    w[3, 5] = 0  # ties and zeros
    want_q, want_scale = ref.quantize_weight(w, bits, qdtype)
    got_q, got_scale = quantize(w, bits, getattr(torch, qdtype))
    assert torch.equal(got_q, want_q)
    assert torch.equal(got_scale.float(), want_scale.float())
    # THUDM's CPU dequantization: float32(scale) * q, exact
    q = unpack_int4(got_q) if bits == 4 else got_q
    assert torch.equal(dequantize(got_q, got_scale, bits), got_scale.float()[:, None] * q.float())


def test_fp16_dequantization_equals_thudms_fp16_kernel_product():
    torch.manual_seed(1)
    q, scale = quantize(torch.randn(32, 64).half(), 8)
    assert torch.equal(dequantize(q, scale, 8, torch.float16), scale[:, None] * q.half())


def test_module_cast_keeps_scales_and_packed_weights():
    torch.manual_seed(2)
    lin = torch.nn.Linear(64, 32)
    qlin = QuantizedLinear.from_linear(lin, 4)
    scale = qlin.weight_scale.clone()
    qlin.to(torch.bfloat16)
    assert qlin.weight.dtype == torch.int8 and qlin.bias.dtype == torch.bfloat16
    assert qlin.weight_scale.dtype == torch.float16 and torch.equal(qlin.weight_scale, scale)
    x = torch.randn(3, 64)
    out = qlin(x.bfloat16())
    want = x @ qlin.dequantized_weight().T + qlin.bias.float()
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), want, atol=0.1)


def test_backward_saves_the_packed_weight_not_a_float_copy():
    torch.manual_seed(3)
    qlin = QuantizedLinear.from_linear(torch.nn.Linear(512, 512), 4)
    x = torch.randn(2, 512, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = qlin(x)
    assert sum(t.numel() * t.element_size() for t in saved) < 512 * 512  # fp32 W would be 1 MiB
    out.sum().backward()
    w = qlin.dequantized_weight()
    assert torch.allclose(x.grad, w.sum(0).expand_as(x), atol=1e-5)


def _folder(name: str, tmp_path_factory):
    if not (FIXTURES / name).is_dir():
        pytest.skip(f"{FIXTURES / name} not present")
    return make_thudm_folder(FIXTURES / name, tmp_path_factory.mktemp(name) / name)


@pytest.fixture(scope="module", params=["v1-int4-tiny", "v3-int4-tiny"])
def int4_folder(request, tmp_path_factory):
    return _folder(request.param, tmp_path_factory)


def _dequantized_copy(model):
    """The same model with every packed linear replaced by an nn.Linear holding its fp32 dequantization."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, QuantizedLinear):
            lin = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            lin.weight.data = module.dequantized_weight()
            if module.bias is not None:
                lin.bias.data = module.bias.data.clone()
            owner, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(owner), attr, lin)
    return twin


def _train(peft_model, batch, steps=3):
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = peft_model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _batch(tok):
    enc = tok(["hello world, this is a test", "你好"], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def test_lora_on_the_packed_base_equals_lora_on_the_dequantized_weights(int4_folder):
    from peft import LoraConfig

    model, tok = load_pretrained(int4_folder)
    twin = _dequantized_copy(model)
    frozen = [(m, m.weight.clone(), m.weight_scale.clone()) for m in model.modules() if isinstance(m, QuantizedLinear)]
    runs = []
    for base in (model, twin):
        torch.manual_seed(0)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=True)
        peft_model = make_peft_model(base, cfg)
        peft_model.train()
        runs.append((_train(peft_model, _batch(tok)),
                     {k: v.detach().clone() for k, v in peft_model.named_parameters() if v.requires_grad}))
    (packed_losses, packed_lora), (float_losses, float_lora) = runs
    assert sorted(packed_lora) == sorted(float_lora) and len(packed_lora) >= 8
    assert packed_losses[-1] < packed_losses[0]  # it learns
    assert np.allclose(packed_losses, float_losses, rtol=1e-5, atol=0)
    for key, value in packed_lora.items():
        torch.testing.assert_close(value, float_lora[key], rtol=1e-4, atol=1e-5)
    for module, weight, scale in frozen:  # the packed base is frozen: not one byte moved
        assert torch.equal(module.weight, weight) and torch.equal(module.weight_scale, scale)


def test_ptuning_v2_trains_on_the_int4_base_and_leaves_it_untouched(int4_folder):
    from peft import PrefixTuningConfig, TaskType

    model, tok = load_pretrained(int4_folder)
    frozen = [(m, m.weight.clone()) for m in model.modules() if isinstance(m, QuantizedLinear)]
    torch.manual_seed(0)
    peft_model = make_peft_model(model, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))
    peft_model.train()
    losses = _train(peft_model, _batch(tok), steps=4)
    assert losses[-1] < losses[0]
    assert frozen and all(torch.equal(m.weight, w) and not m.weight.requires_grad for m, w in frozen)


# --- bad folders: one line naming the file and key ------------------------------------------------------
@pytest.fixture(scope="module")
def v1_int4(tmp_path_factory):
    return _folder("v1-int4-tiny", tmp_path_factory)


@pytest.fixture(scope="module")
def v3_int4(tmp_path_factory):
    return _folder("v3-int4-tiny", tmp_path_factory)


def _edit_weights(src, dst, edit):
    shutil.copytree(src, dst)
    state = torch.load(dst / "pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


V1_QKV = "transformer.layers.1.attention.query_key_value.weight"
V3_DENSE = "transformer.encoder.layers.0.self_attention.dense.weight"
V3_QKV = "transformer.encoder.layers.1.self_attention.query_key_value.weight"


@pytest.mark.parametrize("which,edit,message", [
    ("v1", lambda s: s.pop(V1_QKV + "_scale"), f"pytorch_model.bin: weight '{V1_QKV}_scale' missing"),
    ("v3", lambda s: s.pop(V3_DENSE + "_scale"), f"pytorch_model.bin: weight '{V3_DENSE}_scale' missing"),
    ("v1", lambda s: s.update({V1_QKV: s[V1_QKV][:, :-1].contiguous()}),
     f"pytorch_model.bin: weight '{V1_QKV}' has shape (192, 31), quantization_bit 4 implies (192, 32)"),
    ("v3", lambda s: s.update({V3_QKV: torch.cat([s[V3_QKV], s[V3_QKV]], 1)}),
     f"pytorch_model.bin: weight '{V3_QKV}' has shape (128, 64), quantization_bit 4 implies (128, 32)"),
    ("v3", lambda s: s.update({V3_QKV: s[V3_QKV].half()}),
     f"pytorch_model.bin: weight '{V3_QKV}' has dtype torch.float16, quantization_bit 4 expects int8"),
    ("v1", lambda s: s.update({V1_QKV + "_scale": s[V1_QKV + "_scale"][:5]}),
     f"weight '{V1_QKV}_scale' has shape (5,)"),
])
def test_bad_quantized_weights_give_one_line_naming_file_and_key(v1_int4, v3_int4, tmp_path, which, edit, message):
    folder = _edit_weights(v1_int4 if which == "v1" else v3_int4, tmp_path / "bad", edit)
    with pytest.raises(ModelError) as err:
        load_pretrained(folder)
    text = str(err.value)
    assert message in text and "\n" not in text and str(folder) in text


@pytest.mark.parametrize("changes,message", [
    ({"quantization_bit": 3}, "config.json: key 'quantization_bit' = 3 is not supported"),
    ({"quantization_bit": 8}, f"pytorch_model.bin: weight '{V3_QKV.replace('1.', '0.')}' has shape (128, 32), "
                              "quantization_bit 8 implies (128, 64)"),
])
def test_bad_quantized_configs_name_the_key(v3_int4, tmp_path, changes, message):
    with pytest.raises(ModelError, match=re.escape(message)):
        load_pretrained(_edit_config(v3_int4, tmp_path / "bad", **changes))


def test_int4_embeddings_and_requantizing_are_refused(v1_int4, tmp_path):
    with pytest.raises(ModelError, match="config.json: key 'quantization_embeddings' = true"):
        load_pretrained(_edit_config(v1_int4, tmp_path / "qe", quantization_embeddings=True))
    with pytest.raises(ModelError, match="already quantized to 4 bits; quantization_bit 8 cannot re-quantize"):
        load_pretrained(v1_int4, quantization_bit=8)
    with pytest.raises(ModelError, match="quantization_bit = 5 is not supported"):
        load_pretrained(v1_int4, quantization_bit=5)


def test_quantization_bit_on_a_native_folder_is_refused(v3_int4, tmp_path):
    twin = _dequantized_copy(load_pretrained(v3_int4)[0])
    twin.save_pretrained(tmp_path / "native")  # a transformers-native GLM copy
    with pytest.raises(ModelError, match="THUDM ChatGLM-6B/2/3 folders only"):
        load_pretrained(tmp_path / "native", quantization_bit=8)


# --- resident memory: real-size ChatGLM-6B layers stay packed ----------------------------------------
_MEMORY_PROBE = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from xfed.models import load_pretrained
    import xfed.models.chatglm, xfed.models.loading  # noqa: F401  (imports are not the model's memory)
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    before = rss()
    model, tok = load_pretrained(sys.argv[1])
    after = rss()
    def hwm():
        line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    # the forward's own peak: reset the high-water mark (Linux clear_refs 5) after loading
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    from xfed.models.quantization import packed_bytes
    tensors = packed_bytes(model)
    print(json.dumps({"delta": after - before, "tensors": tensors, "peak": hwm() - before}))
""")


def test_real_size_int4_layers_stay_packed_in_resident_memory(tmp_path):
    """One ChatGLM-6B layer at full size (hidden 4096, ffn 16384) in THUDM's int4 layout: ~100 MB
    packed where its fp32 weights would be 805 MB; a small vocabulary keeps the embeddings out of it."""
    base = FIXTURES / "base" / "chatglm-6b"
    if not base.is_dir():
        pytest.skip(f"{base} not present")
    folder = tmp_path / "chatglm-6b-int4-1layer"
    shutil.copytree(base, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_size=4096, inner_hidden_size=16384, num_attention_heads=32, num_layers=1, vocab_size=1024,
               quantization_bit=4, quantization_embeddings=False)
    (folder / "config.json").write_text(json.dumps(cfg))
    gen = torch.Generator().manual_seed(0)
    h, f, vocab = 4096, 16384, 1024
    state = {}
    for i in range(1):
        p = f"transformer.layers.{i}."
        for name, (out_f, in_f) in {"attention.query_key_value": (3 * h, h), "attention.dense": (h, h),
                                    "mlp.dense_h_to_4h": (f, h), "mlp.dense_4h_to_h": (h, f)}.items():
            state[p + name + ".weight"] = torch.randint(-128, 128, (out_f, in_f // 2), dtype=torch.int8, generator=gen)
            state[p + name + ".weight_scale"] = torch.full((out_f,), 0.01, dtype=torch.float16)
            state[p + name + ".bias"] = torch.zeros(out_f, dtype=torch.float16)
        for ln in ("input_layernorm", "post_attention_layernorm"):
            state[p + ln + ".weight"] = torch.ones(h, dtype=torch.float16)
            state[p + ln + ".bias"] = torch.zeros(h, dtype=torch.float16)
    state["transformer.final_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
    state["transformer.final_layernorm.bias"] = torch.zeros(h, dtype=torch.float16)
    state["transformer.word_embeddings.weight"] = torch.zeros(vocab, h, dtype=torch.float16)
    packed = sum(t.numel() for k, t in state.items() if k.endswith(".weight") and t.dtype == torch.int8)
    torch.save(state, folder / "pytorch_model.bin")
    del state
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(folder)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    embeddings = vocab * h * 4  # fp32 embeddings (the default dtype), shared with lm_head
    assert packed > 100e6  # 201 M int4 weights
    assert got["tensors"] < packed + embeddings + 2e6
    # resident: the packed layers + embeddings, plus the tokenizer and allocator slack (<= 96 MB);
    # fp32 layers would be 8x the packed size
    assert got["delta"] < got["tensors"] + 96e6, got
    # a forward dequantizes one layer at a time: at most ~2 fp32 copies of the largest layer (268 MB) on top
    assert got["peak"] < got["tensors"] + 96e6 + 2 * 16384 * 4096 * 4, got


def test_bitsandbytes_on_cpu_is_refused_in_one_line_without_importing_it(v3_int4):
    for key in ("load_in_4bit", "load_in_8bit"):
        with pytest.raises(ModelError, match=f"model_info.config.{key}: bitsandbytes 4/8-bit bases need a CUDA GPU"):
            load_pretrained(v3_int4, bnb={key: True})
    with pytest.raises(ModelError, match="bnb_4bit_quant_type: 'int3' is not nf4 or fp4"):
        load_pretrained(v3_int4, bnb={"load_in_4bit": True, "bnb_4bit_quant_type": "int3"})
    assert "bitsandbytes" not in sys.modules


def test_a_lora_saved_on_the_int4_base_reloads_through_load_adapter(int4_folder, tmp_path):
    from peft import LoraConfig, TaskType

    from xfed.models import load_adapter

    model, tok = load_pretrained(int4_folder)
    torch.manual_seed(0)
    peft_model = make_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules="all-linear",
                                                   init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "lora")
    ids = _batch(tok)["input_ids"]
    reloaded = load_adapter(load_pretrained(int4_folder)[0], tmp_path / "lora")
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
