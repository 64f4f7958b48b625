"""transformers, eager attention, float32, on the HF folder written from the GGUF."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


def open(path: str, threads: int):
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()

    @torch.inference_mode()
    def stream(ids, n):
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        for i in range(n):
            token = int(out.logits[0, -1].argmax())
            yield token
            if i + 1 < n:
                out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return stream
