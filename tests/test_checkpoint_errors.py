"""Bad checkpoints fail with an error naming the file and the tensor or key at fault."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from export.models.checkpoints import CheckpointError, load_model

from oracle import save_hf_folder


@pytest.fixture()
def folder(tmp_path):
    save_hf_folder("gemma3", tmp_path)
    return tmp_path


def _edit(folder, fn):
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f))


def test_missing_tensor_is_named(folder):
    _edit(folder, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.2\.mlp\.up_proj\.weight"):
        load_model(folder)


def test_extra_tensor_is_named(folder):
    _edit(folder, lambda t: t.__setitem__("model.layers.0.mlp.bias", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected.*model\.layers\.0\.mlp\.bias"):
        load_model(folder)


def test_misshaped_tensor_is_named(folder):
    _edit(folder, lambda t: t.__setitem__("model.norm.weight", torch.zeros(65)))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight has shape \(65,\)"):
        load_model(folder)


def test_unknown_architecture_is_refused(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*LlamaForCausalLM.*not supported"):
        load_model(folder)


def test_sharded_checkpoint_loads_like_a_single_file(folder, tmp_path_factory):
    from oracle import hf_model
    sharded = tmp_path_factory.mktemp("sharded")
    hf_model("gemma3").save_pretrained(sharded, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").exists()
    a, b = load_model(folder).model, load_model(sharded).model
    toks = torch.arange(20)[None]
    assert torch.equal(a(toks, torch.arange(20))[0], b(toks, torch.arange(20))[0])


def test_missing_path_is_named():
    with pytest.raises(CheckpointError, match="no-such-model"):
        load_model("no-such-model")


@pytest.mark.parametrize("change, message", [
    ({"block_types": ["recurrent", "mamba"]}, r"block_types \['mamba'\] unknown"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_activation": "silu"}, "hidden_activation 'silu'"),
])
def test_recurrentgemma_configs_we_cannot_run_are_refused(tmp_path, change, message):
    save_hf_folder("recurrentgemma", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(CheckpointError, match=rf"config\.json: {message}"):
        load_model(tmp_path)


def test_recurrentgemma_tensor_of_a_missing_layer_is_named(tmp_path):
    save_hf_folder("recurrentgemma", tmp_path)
    _edit(tmp_path, lambda t: t.update({"model.layers.9.temporal_block.linear_x.bias": torch.zeros(32)}))
    with pytest.raises(CheckpointError, match=r"model\.layers\.9\.temporal_block\.linear_x\.bias: not in a layer 0\.\.5"):
        load_model(tmp_path)
