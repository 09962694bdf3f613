"""The in-process transformers backend, on a tiny random-weight Qwen2 text model built here."""

import sys
from pathlib import Path

import pytest

from dgtrs_geo.captions import ItemError, TransformersBackend

# Qwen's chat format; the tokenizer is byte-level BPE without merges (every byte a token)
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "a red roof"},
    {"role": "user", "content": [{"type": "text", "text": "a field ."}]},
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer Qwen2 causal LM with a word-level tokenizer and a chat template, saved to disk."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = TEMPLATE
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_lm")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_answer_is_the_greedy_continuation_of_the_chat(tiny_lm: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backend = TransformersBackend(str(tiny_lm), device="cpu")
    answer = backend.complete(MESSAGES, model="ignored", temperature=0.0, max_tokens=6)

    # the same generation done by hand: template with plain-string content, greedy decoding
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    chat = [{"role": "system", "content": "a red roof"}, {"role": "user", "content": "a field ."}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    assert tokenizer.decode(ids[0]) == (
        "<|im_start|>system\na red roof<|im_end|>\n<|im_start|>user\na field .<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with torch.inference_mode():
        output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6)
    expected = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
    assert answer == expected and answer
    assert backend.name == "transformers"


@pytest.mark.slow
def test_text_model_refuses_images(tiny_lm: Path) -> None:
    backend = TransformersBackend(str(tiny_lm), device="cpu")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(ItemError, match="text model; set image: false"):
        backend.complete(
            [{"role": "user", "content": [image, {"type": "text", "text": "a"}]}],
            model="m",
            temperature=0.0,
            max_tokens=2,
        )


def test_missing_transformers_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'transformers"):
        TransformersBackend("Qwen/Qwen2.5-7B-Instruct")


VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer Qwen2.5-VL with its real processor classes, random weights, saved to disk."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[*specials, "<|image_pad|>", "<|video_pad|>"],
    )
    patches = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56, **patches),
        video_processor=Qwen2VLVideoProcessor(**patches),
        tokenizer=fast,
        chat_template=VL_TEMPLATE,
    )
    token = fast.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(fast),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_parameters": rope,
            "bos_token_id": None,
            "eos_token_id": fast.eos_token_id,
            "pad_token_id": fast.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 28,
            "out_hidden_size": 16,
            "fullatt_block_indexes": [0],
        },
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_vl")
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_vision_model_sees_the_image_from_its_data_url(tiny_vl: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dgtrs_geo.captions.images import image_to_data_url, read_rgb

    tile = Path(__file__).parent / "data" / "captions" / "images" / "scene_00.png"
    backend = TransformersBackend(str(tiny_vl), device="cpu")
    image_part = {"type": "image_url", "image_url": {"url": image_to_data_url(tile)}}
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [image_part, {"type": "text", "text": "describe"}]},
    ]
    answer = backend.complete(messages, model="ignored", temperature=0.0, max_tokens=6)

    processor = AutoProcessor.from_pretrained(tiny_vl)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl).eval()
    chat = [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": read_rgb(tile)},
                {"type": "text", "text": "describe"},
            ],
        },
    ]
    inputs = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    # the 48 px tile is resized to 56 px (a multiple of 28): 4 x 4 patches of 14 px, merged
    # 2 x 2 into 4 image tokens
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((inputs["input_ids"] == image_pad).sum()) == 4
    assert "pixel_values" in inputs
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=6)
    expected = processor.batch_decode(
        output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )[0]
    assert answer == expected and answer
