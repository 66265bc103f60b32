"""checkpoint.cast_in_place: fp16 <-> bf16 in the tensor's own memory, chunk by chunk, same values as .to()."""
import torch

import xfed.models.checkpoint as checkpoint


def test_same_width_cast_reuses_the_memory_and_equals_to(monkeypatch):
    monkeypatch.setattr(checkpoint, "_CAST_CHUNK", 100)  # many chunks, a ragged last one
    t = torch.randn(1000, 37).half()
    want, ptr = t.to(torch.bfloat16), t.data_ptr()
    out = checkpoint.cast_in_place(t, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.data_ptr() == ptr and torch.equal(out, want)


def test_other_widths_and_shared_storage_fall_back_to_a_copy():
    t = torch.randn(8, 4).half()
    assert torch.equal(checkpoint.cast_in_place(t, torch.float32), t.float())
    base = torch.randn(8, 4).half()
    view = base[4:]  # shares its storage: converting in place would corrupt `base`
    before = base.clone()
    out = checkpoint.cast_in_place(view, torch.bfloat16)
    assert torch.equal(base, before) and torch.equal(out, before[4:].to(torch.bfloat16))
