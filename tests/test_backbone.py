"""The tiny preset is a real Qwen2.5-VL: forward, loss, generation, save/load; bad checkpoints fail clearly."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vst_vla.backbone import CheckpointError, load_backbone, save_backbone
from vst_vla.tiny import QWEN2_5_VL_SPECIAL_TOKENS, TinySpec, build_tokenizer


def _image(seed: int = 0, size: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _inputs(processor, with_image: bool = True, answer: str | None = None):
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": "How far is the red box?"}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    text = processor.apply_chat_template(messages, add_generation_prompt=answer is None)
    return processor(text=[text], images=[_image()] if with_image else None, return_tensors="pt")


def test_tokenizer_has_every_qwen2_5_vl_special_token_and_template(tiny_backbone):
    _, processor = tiny_backbone
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN2_5_VL_SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids) and tok.unk_token_id not in ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("The red box is 1.25 m away.")["input_ids"]) == "The red box is 1.25 m away."


def test_tokenizer_is_deterministic():
    a, b = build_tokenizer(TinySpec()), build_tokenizer(TinySpec())
    assert a.get_vocab() == b.get_vocab()


def test_model_ids_match_tokenizer(tiny_backbone):
    model, processor = tiny_backbone
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
def test_forward_gives_finite_logits(tiny_backbone, with_image):
    model, processor = tiny_backbone
    inputs = _inputs(processor, with_image=with_image)
    if with_image:
        n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
        assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_loss_falls_over_a_few_steps(tiny_backbone):
    model, processor = tiny_backbone
    model = copy.deepcopy(model).train()
    inputs = _inputs(processor, answer="The red box is 0.8 m away.")
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_generates(tiny_backbone):
    model, processor = tiny_backbone
    inputs = _inputs(processor)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5 or int(out[0, -1]) in model.generation_config.eos_token_id


def test_save_load_round_trip_gives_identical_logits(tiny_backbone, tmp_path):
    model, processor = tiny_backbone
    save_backbone(model, processor, tmp_path / "ckpt")
    model2, processor2 = load_backbone({"source": str(tmp_path / "ckpt"), "device": "cpu"})
    inputs = _inputs(processor2)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model2(**inputs).logits)


def test_tiny_preset_is_deterministic(tiny_backbone):
    model, _ = tiny_backbone
    again, _ = load_backbone({"source": "tiny", "device": "cpu"})
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_missing_checkpoint_dir_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nope")):
        load_backbone(str(tmp_path / "nope"))


def test_hub_id_is_not_downloaded():
    with pytest.raises(CheckpointError, match="download it first"):
        load_backbone("Qwen/Qwen2.5-VL-3B-Instruct")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [("no_config", "no config.json"), ("bad_json", "not valid JSON"), ("wrong_type", "model_type"),
     ("no_weights", "no \\*.safetensors"), ("no_tokenizer", "missing tokenizer files")],
)
def test_malformed_checkpoint_dir_names_what_is_missing(tiny_checkpoint_dir, tmp_path, breakage, message):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint_dir, ckpt)
    if breakage == "no_config":
        (ckpt / "config.json").unlink()
    elif breakage == "bad_json":
        (ckpt / "config.json").write_text("{not json")
    elif breakage == "wrong_type":
        cfg = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps(dict(cfg, model_type="llama")))
    elif breakage == "no_weights":
        for f in ckpt.glob("*.safetensors"):
            f.unlink()
    elif breakage == "no_tokenizer":
        (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=message) as err:
        load_backbone(str(ckpt))
    assert str(ckpt) in str(err.value)


def test_auto_choices_on_cpu():
    from vst_vla.runtime import resolve_attention, resolve_device, resolve_dtype

    device = resolve_device("cpu")
    assert resolve_dtype("auto", device) == torch.float32
    assert resolve_attention("auto", device) == "sdpa"
    with pytest.raises(RuntimeError, match="flash-attn"):
        resolve_attention("flash_attention_2", device)
