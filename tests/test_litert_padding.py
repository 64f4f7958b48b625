"""The LiteRT signatures' padded prefill chunks (export/converters/litert/padding.py wraps the reference
model) against the reference model run on the same chunks unpadded, in torch, before any conversion:
logits of the real tokens and every cache and recurrent state the chunk leaves behind."""
import pytest
import torch

from export.converters.litert.signatures import SignatureModule, cache_names, sample_inputs
from export.models import init_cache
from export.models.checkpoints import load_model

from oracle import save_hf_folder

T, CONTEXT = 16, 64          # the prefill signature's length is twice the tiny sliding window (8)
CHUNKS = (13, 1, 16, 5, 1, 3, 1, 1)   # each a padded `prefill_16` call, then two `decode` calls


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "recurrentgemma"])
@torch.no_grad()
def test_padded_chunks_leave_the_state_of_their_real_tokens(arch, tmp_path):
    save_hf_folder(arch, tmp_path)
    model = load_model(tmp_path).model
    c = model.config
    signature = SignatureModule(model).eval()
    names = cache_names(c)
    state = {k: v for k, v in sample_inputs(c, T, CONTEXT).items() if k in names}
    reference = init_cache(c, CONTEXT)
    ids = torch.randint(0, c.vocab_size, (1, sum(CHUNKS)), generator=torch.Generator().manual_seed(0))
    start = 0
    for call, n in enumerate(CHUNKS):
        length = 1 if call >= len(CHUNKS) - 2 else T
        tokens, input_pos = torch.zeros(1, length, dtype=torch.int32), torch.zeros(length, dtype=torch.int32)
        tokens[0, :n], input_pos[:n] = ids[0, start:start + n], torch.arange(start, start + n)
        out = signature(tokens, input_pos, **state)
        expected, reference = model(ids[:, start:start + n], torch.arange(start, start + n), reference)
        start += n
        scale = expected.abs().max()
        assert (out["logits"][:, :n] - expected).abs().max() < 1e-5 * scale, f"logits after {start} tokens"
        for name, ref in zip(names, (t for entry in reference for t in entry)):
            assert torch.allclose(out[name], ref, rtol=0, atol=1e-5 * max(ref.abs().max(), 1)), \
                f"{name} after {start} tokens"
        state = {name: out[name] for name in names}
