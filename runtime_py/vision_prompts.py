"""Prompts of the seeing Gemmas as token ids, as transformers' processors build them (PaliGemmaProcessor,
Gemma3Processor, ShieldGemma2Processor, transformers 5.23), and the one home of their image markers, image
token ids and ShieldGemma 2's policies.

The image token ids are not assumed from one vocabulary: each builder takes them from the model's config
(`PaliGemmaImageTokens.from_config`, `Gemma3ImageTokens.from_config`); the defaults are the released
checkpoints'. The text between the image tokens is encoded by a runtime_py.tokenizer.Tokenizer (anything
with `encode(text, add_bos=False)` and `bos_id`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

from .contract import END_OF_TURN, START_OF_TURN

# --- PaliGemma 1 / 2 ----------------------------------------------------------------------------------------
PALIGEMMA_IMAGE_MARKER = "<image>"     # PaliGemmaProcessor's IMAGE_TOKEN
PALIGEMMA_IMAGE_ID = 257152            # image_token_index in the released PaliGemma 1 / 2 config.json
PALIGEMMA_PATCH_SIZE = 14              # SigLIP's patch: (image_size // 14) ** 2 image tokens (256 at 224 px)

# --- Gemma 3 4B/12B/27B and ShieldGemma 2 -----------------------------------------------------------------------
START_OF_IMAGE = "<start_of_image>"    # the marker a prompt carries for each image (the tokenizer's boi_token)
END_OF_IMAGE = "<end_of_image>"        # eoi_token
IMAGE_SOFT_TOKEN = "<image_soft_token>"  # image_token: one per vision embedding; not a piece of tokenizer.model
GEMMA3_BOI_ID = 255999                 # Gemma3Config.boi_token_index
GEMMA3_EOI_ID = 256000                 # Gemma3Config.eoi_token_index
GEMMA3_IMAGE_ID = 262144               # Gemma3Config.image_token_index (the 64 ids past the vocabulary's 262144)
GEMMA3_TOKENS_PER_IMAGE = 256          # Gemma3Config.mm_tokens_per_image
IMAGE_PADDING = "\n\n"                 # Gemma3Processor writes it before <start_of_image> and after <end_of_image>

# google/gemma-3-*-it's chat template (tokenizer_config.json), restated: its image branch writes <start_of_image>
# for each {"type": "image"} item, the text items trimmed, nothing between them.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '" + START_OF_TURN + "' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '" + END_OF_TURN + "\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + START_OF_TURN + "model\n' }}{%- endif -%}"
)
# PaliGemma's prompt as a LiteRT-LM jinja template: the image (its marker, which the engine replaces by the image's
# rows and the end-of-vision row, <bos>), the prefix, "\n"; no turns (LiteRT-LM renders templates, PaliGemma
# has none of its own)
PALIGEMMA_LITERT_TEMPLATE = (
    "{%- for message in messages -%}{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}{{ '\n' }}")

# --- ShieldGemma 2 ------------------------------------------------------------------------------------------
SHIELDGEMMA2_YES_ID = 10784            # ShieldGemma2ForImageClassification's yes_token_index: "Yes"
SHIELDGEMMA2_NO_ID = 3771              # no_token_index: "No"
# The built-in policies, copied from transformers' ShieldGemma2Processor (DEFAULT_SHIELDGEMMA2_POLICIES,
# models/shieldgemma2/processing_shieldgemma2.py, Apache-2.0), in its order.
SHIELDGEMMA2_POLICIES: Mapping[str, str] = {
    "dangerous": (
        "No Dangerous Content: The image shall not contain content that facilitates or encourages activities"
        " that could cause real-world harm (e.g., building firearms and explosive devices, promotion of"
        " terrorism, instructions for suicide)."),
    "sexual": (
        "No Sexually Explicit content: The image shall not contain content that depicts explicit or graphic"
        " sexual acts (e.g., pornography, erotic nudity, depictions of rape or sexual assault)."),
    "violence": (
        "No Violence/Gore content: The image shall not contain content that depicts shocking, sensational, or"
        " gratuitous violence (e.g., excessive blood and gore, gratuitous violence against animals, extreme"
        " injury or moment of death)."),
}
# ShieldGemma 2's instruction, as its chat template (chat_template.json, written by transformers' conversion
# script) lays it out. The template prints each line with its own {{ ... }} and nothing trims the line breaks
# and the 16 spaces of indentation between them, so they are part of the prompt transformers builds.
_SG2_INDENT = "\n" + " " * 16
_SG2_INSTRUCTION = _SG2_INDENT.join((
    "You are a policy expert trying to help determine whether a generated or real image is in",
    " violation of the safety policy below. Your decision must very clearly follow the specific",
    " language used in the safety policy and should not include any interpretation outside of the",
    " safety policy.\n\n",
    "<BEGIN_SAFETY_POLICY>\n",
    "{policy}\n",
    "</END_SAFETY_POLICY>\n\n",
    "Does the image violate the above policy? Your Answer must start with 'Yes' or 'No'.",
    f"{END_OF_TURN}\n",
))
_USER_TURN, _MODEL_TURN = f"{START_OF_TURN}user\n", f"{START_OF_TURN}model\n"


class VisionPrompt(NamedTuple):
    """A prompt's `input_ids` and `token_type_ids` as the processor returns them. Gemma 3 / ShieldGemma 2: 1 on
    the image soft tokens (each image's tokens attend to each other both ways), 0 elsewhere. PaliGemma: 0 on
    the whole prompt, the prefix its prefix-LM attends to both ways; generated tokens are 1 (causal)."""
    input_ids: list[int]
    token_type_ids: list[int]

    @property
    def prefix_length(self) -> int:
        """PaliGemma's bidirectional prefix: the tokens whose type is 0 before the first 1 (the whole prompt)."""
        return self.token_type_ids.index(1) if 1 in self.token_type_ids else len(self.token_type_ids)


@dataclass(frozen=True)
class PaliGemmaImageTokens:
    """PaliGemma's image placeholder id and how many per image (config image_token_index; (image_size //
    patch_size) ** 2 of its vision_config)."""
    image_id: int = PALIGEMMA_IMAGE_ID
    per_image: int = (224 // PALIGEMMA_PATCH_SIZE) ** 2

    @classmethod
    def from_config(cls, config: Mapping) -> "PaliGemmaImageTokens":
        """From a PaliGemma config.json (a dict)."""
        vision = config.get("vision_config") or {}
        size, patch = vision.get("image_size", 224), vision.get("patch_size", PALIGEMMA_PATCH_SIZE)
        return cls(int(config.get("image_token_index", PALIGEMMA_IMAGE_ID)), (int(size) // int(patch)) ** 2)


@dataclass(frozen=True)
class Gemma3ImageTokens:
    """Gemma 3's image ids and soft tokens per image (config boi/eoi/image_token_index, mm_tokens_per_image)."""
    boi_id: int = GEMMA3_BOI_ID
    eoi_id: int = GEMMA3_EOI_ID
    image_id: int = GEMMA3_IMAGE_ID
    per_image: int = GEMMA3_TOKENS_PER_IMAGE

    @classmethod
    def from_config(cls, config: Mapping) -> "Gemma3ImageTokens":
        """From a Gemma 3 / ShieldGemma 2 config.json (a dict)."""
        return cls(int(config.get("boi_token_index", GEMMA3_BOI_ID)),
                   int(config.get("eoi_token_index", GEMMA3_EOI_ID)),
                   int(config.get("image_token_index", GEMMA3_IMAGE_ID)),
                   int(config.get("mm_tokens_per_image", GEMMA3_TOKENS_PER_IMAGE)))


def paligemma_prompt(tokenizer, prompt: str, num_images: int = 1,
                     tokens: PaliGemmaImageTokens = PaliGemmaImageTokens()) -> VisionPrompt:
    """PaliGemma's input: the images' tokens, <bos>, `prompt` (its task prefix, e.g. "caption en") and "\\n".

    Without <image> markers in `prompt` the images go first (`num_images` x `per_image` image ids); with
    them, each marker stands for one image's tokens and <bos> follows the last one. The whole prompt is the
    prefix (token type 0).
    """
    _check_count(num_images, prompt)
    parts = prompt.split(PALIGEMMA_IMAGE_MARKER)
    if len(parts) == 1:
        parts = [""] * num_images + [prompt]
    elif len(parts) - 1 != num_images:
        raise ValueError(f"the prompt has {len(parts) - 1} {PALIGEMMA_IMAGE_MARKER} markers for {num_images} images")
    image = [tokens.image_id] * tokens.per_image
    ids: list[int] = []
    for text in parts[:-1]:
        ids += _encode(tokenizer, text) + image
    ids += [tokenizer.bos_id] + _encode(tokenizer, parts[-1] + "\n")
    return VisionPrompt(ids, [0] * len(ids))


def gemma3_prompt(tokenizer, prompt: str, num_images: int,
                  tokens: Gemma3ImageTokens = Gemma3ImageTokens()) -> VisionPrompt:
    """Gemma 3's input: <bos>, then `prompt` with each <start_of_image> marker expanded to "\\n\\n",
    <start_of_image>, `per_image` x <image_soft_token>, <end_of_image>, "\\n\\n".

    The number of markers must be `num_images` (Gemma3Processor refuses other counts: it does not put missing
    ones in front). An empty prompt stands for no text: the markers alone, joined by spaces, as Gemma3Processor
    writes them when given no text. gemma3_chat_prompt puts the markers where a chat's image items are.
    """
    _check_count(num_images, prompt)
    if not prompt and num_images:
        prompt = " ".join([START_OF_IMAGE] * num_images)
    parts = prompt.split(START_OF_IMAGE)
    if len(parts) - 1 != num_images:
        raise ValueError(f"the prompt has {len(parts) - 1} {START_OF_IMAGE} markers for {num_images} images "
                         f"(write one where each image goes)")
    image = [tokens.boi_id] + [tokens.image_id] * tokens.per_image + [tokens.eoi_id]
    ids = [tokenizer.bos_id]
    for i, text in enumerate(parts):
        # the padding merges with the text around it: it is tokenized with it, as one piece of text
        text = (IMAGE_PADDING if i else "") + text + (IMAGE_PADDING if i < num_images else "")
        ids += _encode(tokenizer, text) + (image if i < num_images else [])
    return VisionPrompt(ids, [int(i == tokens.image_id) for i in ids])


def gemma3_chat_prompt(tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                       tokens: Gemma3ImageTokens = Gemma3ImageTokens()) -> VisionPrompt:
    """gemma3_prompt of a chat, as Gemma 3's chat template (google/gemma-3-*-it) writes it: a message's content
    is a str or a list of {"type": "text", "text": ...} items (each stripped) and {"type": "image"} items
    (each written <start_of_image>, nothing around it, one image each, in order). The turns, the system
    message and the roles are Tokenizer.chat_prompt's. Special pieces in the texts are not escaped: a
    <start_of_image> written in a text is a marker without an image, refused as transformers refuses it."""
    flat, images = [], 0
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            if i == 0 and message.get("role") == "system":     # the template reads the first item's text
                content = str(content[0].get("text", "")) if content else ""
            else:
                images += sum(isinstance(item, Mapping) and item.get("type") == "image" for item in content)
                content = "".join(_chat_item(item) for item in content)
        flat.append({**message, "content": content})
    return gemma3_prompt(tokenizer, tokenizer.chat_prompt(flat, add_generation_prompt), images, tokens)


def shieldgemma2_prompt_text(policy: str) -> str:
    """One ShieldGemma 2 prompt for one image and one policy description, as its chat template writes it
    (without <bos>): the image's <start_of_image> marker in a user turn, the instruction in a second one."""
    return _USER_TURN + START_OF_IMAGE + _USER_TURN + _SG2_INSTRUCTION.replace("{policy}", policy) + _MODEL_TURN


def shieldgemma2_prompts(tokenizer, num_images: int, policies: Sequence[str] | None = None,
                         custom_policies: Mapping[str, str] | None = None,
                         tokens: Gemma3ImageTokens = Gemma3ImageTokens()) -> list[VisionPrompt]:
    """ShieldGemma 2's batch: one prompt per (image, policy), image-major (prompt k is image k // P with policy
    k % P, P = the number of policies), unpadded (ShieldGemma2Processor pads on the left).

    `policies` are names in SHIELDGEMMA2_POLICIES updated by `custom_policies` (name -> description; a name
    of the built-in ones replaces its text); None means every name there, built-in first. The answer is
    read from the last position's logits at SHIELDGEMMA2_YES_ID and SHIELDGEMMA2_NO_ID.

    As transformers builds them, each prompt starts with two <bos>: the chat template writes one and the
    tokenizer adds one.
    """
    _check_count(num_images)
    definitions = {**SHIELDGEMMA2_POLICIES, **(custom_policies or {})}
    names = list(definitions) if policies is None else list(policies)
    unknown = [name for name in names if name not in definitions]
    if unknown:
        raise ValueError(f"unknown ShieldGemma 2 policies {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(definitions)} (custom_policies adds more)")
    if not names:
        raise ValueError("no ShieldGemma 2 policy to classify against")
    prompts = []
    for name in names:
        text = shieldgemma2_prompt_text(definitions[name])
        first = gemma3_prompt(tokenizer, text, 1, tokens)
        prompts.append(VisionPrompt([tokenizer.bos_id] + first.input_ids, [0] + first.token_type_ids))
    return [prompt for _ in range(num_images) for prompt in prompts]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_bos=False)) if text else []


def _check_count(num_images, prompt: str = "") -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be a str, not {type(prompt).__name__}")
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 0:
        raise ValueError(f"num_images must be an int >= 0, not {num_images!r}")


def _chat_item(item) -> str:
    kind = item.get("type") if isinstance(item, Mapping) else None
    if kind == "image":
        return START_OF_IMAGE
    if kind == "text":
        return str(item.get("text", "")).strip()
    raise ValueError(f"content item {item!r}: expected {{'type': 'text', 'text': ...}} or {{'type': 'image'}}")
