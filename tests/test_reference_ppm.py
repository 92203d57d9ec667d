"""The reference's PPM checkpoints in and out (rstar_reference.md §4.5).

The checkpoints are built with torch and transformers by the committed fixture script,
the way the reference's train_RM.py (unsplit checkpoint) and save_rm.py (exported pair)
write them; the expected scores are tanh(v / 5) computed by that torch model.
"""

import importlib.util
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_fixtures import torch, transformers
from rstar_jax.models import CheckpointError, load_ppm, params_of, save_pretrained
from rstar_jax.models.hf_io import (PPM_OURS, PPM_POLICY, PPM_REFERENCE_EXPORT,
                                    PPM_REFERENCE_UNSPLIT, detect_ppm_shape)
from rstar_jax.models.reference_ppm import REFERENCE_HEAD_NAMES, conversion_command

HERE = os.path.dirname(os.path.abspath(__file__))


def _fixtures():
    spec = importlib.util.spec_from_file_location(
        "make_reference_fixtures", os.path.join(HERE, "fixtures", "make_reference_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


F = _fixtures()


def batch(vocab, seed=0):
    """Right-padded ids [3, 12] and mask with three different lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (3, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return ids, mask


def our_scores(ppm, ids, mask):
    return np.asarray(ppm.scores(jnp.asarray(ids), jnp.asarray(mask)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """policy/, rm_checkpoint/ (unsplit), rm_export/ (exported pair) and the torch PPM."""
    root = tmp_path_factory.mktemp("reference")
    paths = {k: str(root / k) for k in ("policy", "rm_checkpoint", "rm_export")}
    F.write_policy(paths["policy"], tie=False, seed=0)
    rm = F.write_unsplit_checkpoint(paths["policy"], paths["rm_checkpoint"], seed=1)
    F.export_like_save_rm(paths["policy"], paths["rm_checkpoint"], paths["rm_export"])
    vocab = rm.pretrained_model.get_input_embeddings().weight.shape[0]
    ids, mask = batch(vocab)
    return paths, rm, ids, mask, F.torch_scores(rm, ids, mask)


def test_exported_pair_loads_and_scores_like_the_torch_model(reference):
    paths, rm, ids, mask, expected = reference
    assert detect_ppm_shape(paths["rm_export"]) == PPM_REFERENCE_EXPORT
    head = torch.load(os.path.join(paths["rm_export"], "value_head.bin"), weights_only=True)
    assert sorted(head) == sorted(REFERENCE_HEAD_NAMES)   # what save_rm.py writes
    ppm = load_ppm(paths["rm_export"], dtype="float32")
    assert ppm.cfg.vocab_size == 515          # the PPM tokenizer's 3 new tokens (train_RM.py)
    np.testing.assert_allclose(our_scores(ppm, ids, mask), expected, atol=1e-5, rtol=0)
    assert 0.05 < np.abs(expected).max() < 0.99   # a real head, not the near-zero init


def test_unsplit_checkpoint_loads_with_the_policy_config(reference):
    paths, rm, ids, mask, expected = reference
    assert detect_ppm_shape(paths["rm_checkpoint"]) == PPM_REFERENCE_UNSPLIT
    assert not os.path.exists(os.path.join(paths["rm_checkpoint"], "config.json"))
    with pytest.raises(CheckpointError, match="config_dir"):
        load_ppm(paths["rm_checkpoint"])
    ppm = load_ppm(paths["rm_checkpoint"], dtype="float32", config_dir=paths["policy"])
    # The policy's config says 512; the embeddings were resized to the PPM tokenizer.
    assert ppm.cfg.vocab_size == 515
    np.testing.assert_allclose(our_scores(ppm, ids, mask), expected, atol=1e-5, rtol=0)


def test_unsplit_checkpoint_of_a_tied_policy(tmp_path):
    F.write_policy(str(tmp_path / "policy"), tie=True, seed=3)
    rm = F.write_unsplit_checkpoint(str(tmp_path / "policy"), str(tmp_path / "ckpt"), seed=4)
    ids, mask = batch(515, seed=1)
    ppm = load_ppm(tmp_path / "ckpt", dtype="float32", config_dir=tmp_path / "policy")
    assert ppm.cfg.tie_word_embeddings
    np.testing.assert_allclose(our_scores(ppm, ids, mask), F.torch_scores(rm, ids, mask),
                               atol=1e-5, rtol=0)


class _RunsCode:
    """A pickled object whose unpickling would create a file: it must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("content, needle", [
    ("object", "refused it"),
    ("float", "is a float, not a tensor"),
    ("tensor", "holds a Tensor"),
    ("extra", "unexpected tensors"),
], ids=["pickled-object", "non-tensor-value", "bare-tensor", "extra-tensor"])
def test_value_head_bin_holding_anything_but_tensors_is_refused(reference, tmp_path, content,
                                                                 needle):
    paths = reference[0]
    d = tmp_path / "ppm"
    shutil.copytree(paths["rm_export"], d)
    marker = tmp_path / "unpickled"
    w, b = REFERENCE_HEAD_NAMES
    weight = torch.zeros(1, 64)
    obj = {"object": {w: _RunsCode(str(marker)), b: torch.zeros(1)},
           "float": {w: weight, b: 0.5},
           "tensor": weight,
           "extra": {w: weight, b: torch.zeros(1), "v_head.other": torch.zeros(1)}}[content]
    torch.save(obj, d / "value_head.bin")
    with pytest.raises(CheckpointError, match=needle):
        load_ppm(d, dtype="float32")
    assert not marker.exists()


def test_without_torch_the_error_says_how_to_convert(reference, tmp_path, monkeypatch):
    paths, rm, ids, mask, expected = reference
    d = tmp_path / "ppm"
    shutil.copytree(paths["rm_export"], d)
    monkeypatch.setitem(sys.modules, "torch", None)    # `import torch` now fails
    with pytest.raises(CheckpointError, match="needs torch") as err:
        load_ppm(d, dtype="float32")
    assert conversion_command(str(d)) in str(err.value)
    monkeypatch.undo()
    # The command, run where torch is installed, gives our value_head.safetensors, which
    # load_ppm then reads first.
    argv = conversion_command(str(d)).split(" ", 2)
    assert argv[:2] == ["python", "-c"] and argv[2][0] == argv[2][-1] == '"'
    exec(argv[2][1:-1], {})       # what `python -c` runs; in-process, torch is loaded already
    assert detect_ppm_shape(d) == PPM_OURS
    np.testing.assert_allclose(our_scores(load_ppm(d, dtype="float32"), ids, mask), expected,
                               atol=1e-5, rtol=0)


def test_saved_in_reference_format_loads_as_the_reference_does(reference, tmp_path):
    """save_pretrained(reference_format=True) -> the reference's inference loading
    (rstar_deepthink/llms/llm_engine.py): torch.load(weights_only=True), strip "v_head.",
    strict load_state_dict into a ValueHead; scores equal ours."""
    paths, rm, ids, mask, _ = reference
    ppm = load_ppm(paths["rm_export"], dtype="float32")
    ppm.v_head.bias.set_value(jnp.array([-0.4]))          # our own head now
    out = tmp_path / "ours_as_reference"
    tok = transformers.AutoTokenizer.from_pretrained(paths["rm_export"])
    save_pretrained(ppm, out, tokenizer=tok, reference_format=True)
    assert not (out / "value_head.safetensors").exists()
    assert (out / "tokenizer.json").exists()

    value_head_cls, rm_cls = F._torch_modules()
    state = torch.load(out / "value_head.bin", weights_only=True)
    head = value_head_cls(64)
    head.load_state_dict({k.replace("v_head.", "", 1): v for k, v in state.items()})  # strict
    theirs = rm_cls(transformers.AutoModelForCausalLM.from_pretrained(str(out),
                                                                      dtype=torch.float32))
    theirs.v_head = head
    expected = F.torch_scores(theirs.eval(), ids, mask)
    np.testing.assert_allclose(our_scores(ppm, ids, mask), expected, atol=1e-5, rtol=0)

    again = load_ppm(out, dtype="float32")
    for a, b in zip(jax.tree.leaves(params_of(ppm)), jax.tree.leaves(params_of(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Saving in our shape again replaces the reference head, so nothing stale is read.
    save_pretrained(ppm, out)
    assert detect_ppm_shape(out) == PPM_OURS and not (out / "value_head.bin").exists()


def test_reference_format_without_torch_fails_before_writing(reference, tmp_path, monkeypatch):
    ppm = load_ppm(reference[0]["rm_export"], dtype="float32")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch"):
        save_pretrained(ppm, tmp_path / "out", reference_format=True)
    assert not (tmp_path / "out").exists()


def test_a_directory_in_no_known_shape_names_all_three(reference, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError) as err:
        load_ppm(empty)
    for needle in ("value_head.safetensors", "value_head.bin", "'pretrained_model.'",
                   "found: notes.txt"):
        assert needle in str(err.value)
    # A policy directory is a fourth case: it names the shapes and the way to start a PPM.
    assert detect_ppm_shape(reference[0]["policy"]) == PPM_POLICY
    with pytest.raises(CheckpointError, match="init_value_head_seed.*value_head.bin"):
        load_ppm(reference[0]["policy"])
    # Prefixed trunk tensors without a value head are not the unsplit checkpoint.
    from safetensors.numpy import load_file, save_file
    trunk_only = tmp_path / "trunk_only"
    trunk_only.mkdir()
    tensors = load_file(os.path.join(reference[0]["rm_checkpoint"], "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("v_head.")},
              str(trunk_only / "model.safetensors"))
    with pytest.raises(CheckpointError, match="without v_head"):
        load_ppm(trunk_only, config_dir=reference[0]["policy"])


def test_reference_format_is_for_a_ppm(reference, tmp_path):
    policy = load_ppm(reference[0]["rm_export"], dtype="float32").backbone
    with pytest.raises(ValueError, match="for a PPM"):
        save_pretrained(policy, tmp_path / "p", reference_format=True)
    assert not (tmp_path / "p").exists()
