"""Model presets in configs/model.py, and the real numbers read from a checkpoint."""

import pytest

from configs import model as presets
from hf_fixtures import make_hf_checkpoint
from rstar_jax.models import Qwen2Config


@pytest.mark.parametrize("name", presets.PRESETS)
def test_presets_build_a_qwen2_config(name):
    cfg = Qwen2Config.from_config_dict(presets.get_config(name))
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    if name == "qwen2.5-math-1.5b":
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.tie_word_embeddings) == (1536, 28, True)


def test_checkpoint_path_reads_its_config_json(tmp_path):
    make_hf_checkpoint(str(tmp_path), tie=False, num_hidden_layers=2, rope_theta=5000.0)
    c = presets.get_config(str(tmp_path))
    assert c.checkpoint == str(tmp_path)
    ours, real = Qwen2Config.from_config_dict(c), Qwen2Config.from_pretrained(tmp_path)
    for field in presets._ARCH_FIELDS[:-1]:
        assert getattr(ours, field) == getattr(real, field), field
    assert (c.num_hidden_layers, c.rope_theta, c.tie_word_embeddings) == (2, 5000.0, False)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="qwen2.5-math-7b"):
        presets.get_config("qwen3")
