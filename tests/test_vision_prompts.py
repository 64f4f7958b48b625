"""runtime_py.vision_prompts against transformers' own processors (PaliGemmaProcessor, Gemma3Processor,
ShieldGemma2Processor), built offline: the real Gemma 3 270M tokenizer.model (the bundled GGUF's vocabulary,
which has <start_of_image> 255999 and <end_of_image> 256000 but no <image_soft_token>: transformers adds it,
at 262144 as in the released Gemma 3 tokenizers) as a GemmaTokenizer, the PIL image processors, and the chat
templates restated below from their published text. input_ids and token_type_ids are compared for equality.

The PaliGemma comparison runs on this vocabulary too: the processor adds <image> to it (not at PaliGemma's
257152), so the ids under test are the ones the processor reports, passed in as a config would pass them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from runtime_py.tokenizer import Tokenizer
from runtime_py.vision_prompts import (GEMMA3_BOI_ID, GEMMA3_EOI_ID, GEMMA3_IMAGE_ID, IMAGE_SOFT_TOKEN,
                                       PALIGEMMA_IMAGE_ID, SHIELDGEMMA2_NO_ID, SHIELDGEMMA2_POLICIES,
                                       SHIELDGEMMA2_YES_ID, START_OF_IMAGE, Gemma3ImageTokens,
                                       PaliGemmaImageTokens, gemma3_chat_prompt, gemma3_prompt, paligemma_prompt,
                                       shieldgemma2_prompts)
from runtime_py.vision_prompts import GEMMA3_CHAT_TEMPLATE  # noqa: E402  (the published template, restated there)

# ShieldGemma 2's chat template as transformers' conversion script writes it (chat_template.json), restated.
# Each line of the published template is its own {{ ... }} on a line indented by 16 spaces, and nothing trims
# the text between them: that line break and indentation is `_LINE` here.
_LINE = "\n" + " " * 16
SHIELDGEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}{%- for item in message['content'] -%}"
    "{{ '<start_of_turn>user\n' }}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}"
    + _LINE.join([
        "{{ 'You are a policy expert trying to help determine whether a generated or real image is in' }}",
        "{{ ' violation of the safety policy below. Your decision must very clearly follow the specific' }}",
        "{{ ' language used in the safety policy and should not include any interpretation outside of the' }}",
        "{{ ' safety policy.\n\n' }}",
        "{{ '<BEGIN_SAFETY_POLICY>\n' }}",
        "{{ item['text'] + '\n' }}",
        "{{ '</END_SAFETY_POLICY>\n\n' }}",
        "{{ 'Does the image violate the above policy? Your Answer must start with \\'Yes\\' or \\'No\\'.' }}",
        "{{ '<end_of_turn>\n' }}"])
    + "{%- endif -%}{%- endfor -%}{{ '<start_of_turn>model\n' }}{%- endfor -%}"
)


@pytest.fixture(scope="module")
def tok(real_tokenizer_proto):
    return Tokenizer.from_bytes(real_tokenizer_proto)


@pytest.fixture(scope="module")
def hf_tokenizer(real_tokenizer_proto, tmp_path_factory):
    """hf_tokenizer(gemma3) -> a fresh transformers GemmaTokenizer of the real vocabulary (processors change the
    tokenizer they are given); with `gemma3`, Gemma 3's image tokens declared as its released
    tokenizer_config.json declares them (PaliGemma's tokenizer has none of them)."""
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "tokenizer.model").write_bytes(real_tokenizer_proto)
    images = {"boi_token": START_OF_IMAGE, "eoi_token": "<end_of_image>", "image_token": IMAGE_SOFT_TOKEN}
    for name, extra in (("plain", {}), ("gemma3", {"extra_special_tokens": images})):
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, **extra}))
        AutoTokenizer.from_pretrained(folder).save_pretrained(folder / name)   # convert the vocabulary once
    return lambda gemma3: AutoTokenizer.from_pretrained(folder / ("gemma3" if gemma3 else "plain"))


def _images(n: int) -> list:
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 31, 3), dtype=np.uint8)) for i in range(n)]


def _rows(batch) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) of each row, its padding (attention_mask 0) left out."""
    out = []
    for ids, types, mask in zip(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]):
        keep = [i for i, m in enumerate(mask) if m]
        out.append(([int(ids[i]) for i in keep], [int(types[i]) for i in keep]))
    return out


# --- Gemma 3 ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[256, 5], ids=["256-per-image", "5-per-image"])
def gemma3(request, hf_tokenizer):
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor
    hf = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
                         tokenizer=hf_tokenizer(True), chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=request.param)
    t = hf.tokenizer
    tokens = Gemma3ImageTokens(t.boi_token_id, t.eoi_token_id, t.image_token_id, request.param)
    return hf, tokens


GEMMA3_CASES = [
    ("<start_of_image>Describe the image.", 1),
    ("Describe <start_of_image> in one word.", 1),
    ("Compare<start_of_image>and <start_of_image>\n\nwhich is brighter?", 2),
    ("<start_of_image><start_of_image>", 2),
    ("  spaces before and after <start_of_image>  ", 1),
    ("<start_of_turn>user\n<start_of_image>What is this?<end_of_turn>\n<start_of_turn>model\n", 1),
    ("", 1),
    ("", 2),
    ("No image here, only text: 日本語 😀", 0),
]


@pytest.mark.parametrize("prompt,n", GEMMA3_CASES)
def test_gemma3_prompt_matches_gemma3processor(gemma3, tok, prompt, n):
    hf, tokens = gemma3
    text = prompt or None          # our empty prompt is the processor's call without text
    expected = _rows(hf(images=[_images(n)] if n else None, text=text, return_token_type_ids=True))
    assert [tuple(gemma3_prompt(tok, prompt, n, tokens))] == expected


def test_gemma3_chat_matches_the_chat_template(gemma3, tok):
    """Against the processor's apply_chat_template(tokenize=True), the images given in the messages."""
    hf, tokens = gemma3
    pictures = iter(_images(6))

    def image():
        return {"type": "image", "image": next(pictures)}
    chats = [
        [{"role": "user", "content": [image(), {"type": "text", "text": "  What is shown?\n"}]}],
        [{"role": "system", "content": "Answer in French."},
         {"role": "user", "content": [{"type": "text", "text": "First"}, image(), {"type": "text", "text": "then"},
                                      image()]},
         {"role": "assistant", "content": "Deux images."},
         {"role": "user", "content": "Which one is larger?"}],
        [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
         {"role": "user", "content": [image(), image(), image()]}],
    ]
    for messages in chats:
        for generation in (True, False):
            expected = hf.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True,
                                              return_dict=True, processor_kwargs={"return_token_type_ids": True})
            assert [tuple(gemma3_chat_prompt(tok, messages, generation, tokens))] == _rows(expected)


def test_gemma3_refuses_markers_that_do_not_match_the_images(gemma3, tok):
    hf, tokens = gemma3
    for prompt, n in [("Describe the image.", 1), ("<start_of_image> and <start_of_image>", 1),
                      ("<start_of_image>", 0)]:
        with pytest.raises(ValueError):
            hf(images=[_images(n)] if n else None, text=prompt)
        with pytest.raises(ValueError, match="markers for"):
            gemma3_prompt(tok, prompt, n, tokens)
    with pytest.raises(ValueError, match="markers for"):
        gemma3_chat_prompt(tok, [{"role": "user", "content": "<start_of_image> described"}], tokens=tokens)
    for prompt, n, match in [(None, 1, "str"), ("<start_of_image>", 1.0, "num_images"), ("", -1, "num_images")]:
        with pytest.raises(ValueError, match=match):
            gemma3_prompt(tok, prompt, n, tokens)
        with pytest.raises(ValueError, match=match):
            paligemma_prompt(tok, prompt, n)


def test_gemma3_ids_are_the_configs_and_the_vocabularys(tok):
    from transformers import Gemma3Config, ShieldGemma2Config
    for config in (Gemma3Config(), ShieldGemma2Config()):
        assert Gemma3ImageTokens.from_config(config.to_dict()) == Gemma3ImageTokens() == Gemma3ImageTokens(
            config.boi_token_index, config.eoi_token_index, config.image_token_index, config.mm_tokens_per_image)
    assert (tok.id_of(START_OF_IMAGE), tok.id_of("<end_of_image>")) == (GEMMA3_BOI_ID, GEMMA3_EOI_ID)
    assert GEMMA3_IMAGE_ID == tok.vocab_size and IMAGE_SOFT_TOKEN not in tok
    tiny = Gemma3ImageTokens.from_config({"boi_token_index": 5, "eoi_token_index": 6, "image_token_index": 7,
                                          "mm_tokens_per_image": 4})
    assert gemma3_prompt(tok, "<start_of_image>", 1, tiny).input_ids == [2, 108, 5, 7, 7, 7, 7, 6, 108]


# --- PaliGemma --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[256, 6], ids=["256-per-image", "6-per-image"])
def paligemma(request, hf_tokenizer):
    from transformers import PaliGemmaProcessor, SiglipImageProcessorPil
    images = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    images.image_seq_length = request.param
    hf = PaliGemmaProcessor(image_processor=images, tokenizer=hf_tokenizer(False))
    return hf, PaliGemmaImageTokens(hf.image_token_id, request.param)


PALIGEMMA_CASES = [
    ("caption en", 1),
    ("answer en What is on the table?", 1),
    ("detect cat ; dog", 1),
    ("", 1),
    ("caption es", 2),
    ("<image>caption en", 1),
    ("<image><image>describe both", 2),
    ("prefix text <image> then the task", 1),
]


@pytest.mark.parametrize("prompt,n", PALIGEMMA_CASES)
def test_paligemma_prompt_matches_paligemmaprocessor(paligemma, tok, prompt, n):
    hf, tokens = paligemma
    expected = _rows(hf(images=[_images(n)], text=prompt))
    ours = paligemma_prompt(tok, prompt, n, tokens)
    assert [tuple(ours)] == expected
    assert ours.prefix_length == len(ours.input_ids)       # the whole prompt is the bidirectional prefix


def test_paligemma_ids(tok):
    """The released PaliGemma vocabularies are Gemma's 256,000 pieces, then the 1,024 <locNNNN> and 128
    <segNNN> pieces PaliGemmaProcessor lists (EXTRA_TOKENS), then <image>: 257152 (their config.json's
    image_token_index; transformers' PaliGemmaConfig still defaults to 256000)."""
    from transformers import PaliGemmaConfig
    from transformers.models.paligemma.processing_paligemma import EXTRA_TOKENS
    assert PALIGEMMA_IMAGE_ID == 256000 + len(EXTRA_TOKENS)
    for size in (224, 448, 896):
        config = PaliGemmaConfig(image_token_index=PALIGEMMA_IMAGE_ID, vision_config={"image_size": size})
        assert PaliGemmaImageTokens.from_config(config.to_dict()) == PaliGemmaImageTokens(
            PALIGEMMA_IMAGE_ID, config.text_config.num_image_tokens)
    with pytest.raises(ValueError, match="markers for"):
        paligemma_prompt(tok, "<image>caption en", 2)


# --- ShieldGemma 2 ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shieldgemma2(hf_tokenizer):
    from transformers import Gemma3ImageProcessorPil, ShieldGemma2Processor
    hf = ShieldGemma2Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
                               tokenizer=hf_tokenizer(True), chat_template=SHIELDGEMMA2_CHAT_TEMPLATE,
                               image_seq_length=7)
    t = hf.tokenizer
    return hf, Gemma3ImageTokens(t.boi_token_id, t.eoi_token_id, t.image_token_id, 7)


@pytest.mark.parametrize("n,policies,custom", [
    (1, None, None),
    (2, None, None),
    (2, ["violence", "dangerous"], None),
    (1, None, {"weapons": "No weapons: the image shall not show any firearm."}),
    (2, ["weapons", "sexual"], {"weapons": "No weapons.", "sexual": "A replaced description of the policy."}),
])
def test_shieldgemma2_prompts_match_shieldgemma2processor(shieldgemma2, tok, n, policies, custom):
    hf, tokens = shieldgemma2
    given = {k: v for k, v in (("policies", policies), ("custom_policies", custom)) if v is not None}
    expected = _rows(hf(images=_images(n), **given))
    ours = shieldgemma2_prompts(tok, n, policies, custom, tokens)
    assert [tuple(p) for p in ours] == expected
    assert all(p.input_ids[:2] == [tok.bos_id, tok.bos_id] for p in ours)


def test_shieldgemma2_facts(tok):
    from transformers.models.shieldgemma2.processing_shieldgemma2 import DEFAULT_SHIELDGEMMA2_POLICIES
    assert dict(SHIELDGEMMA2_POLICIES) == DEFAULT_SHIELDGEMMA2_POLICIES
    assert list(SHIELDGEMMA2_POLICIES) == list(DEFAULT_SHIELDGEMMA2_POLICIES)
    assert (tok.id_of("Yes"), tok.id_of("No")) == (SHIELDGEMMA2_YES_ID, SHIELDGEMMA2_NO_ID)
    with pytest.raises(ValueError, match="'hate'"):
        shieldgemma2_prompts(tok, 1, ["hate"])
    with pytest.raises(ValueError, match="num_images"):
        shieldgemma2_prompts(tok, -1)
