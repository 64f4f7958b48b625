"""The runtime tokenizer: a SentencePiece model plus Gemma's prompt formats.

Depends on sentencepiece and the standard library only, so it runs where torch does not.
"""
from __future__ import annotations

import codecs
import os
import re
from pathlib import Path

import sentencepiece as spm

from .contract import END_OF_TURN, TURN_TEMPLATES
from .files import write_atomic

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FILE_SEPARATOR = "<|file_separator|>"

_TURN_ROLES = {"user": "user", "assistant": "model", "model": "model"}
# Pieces that are control tokens to the model, whatever their SentencePiece type (Gemma's tokenizer makes them
# USER_DEFINED, which SentencePiece matches in any text): turn and image markers, <mask>, <unusedN>, CodeGemma's
# <|fim_...|> / <|file_separator|>. (Gemma's HTML-tag pieces are USER_DEFINED too, but ordinary text.)
SPECIAL_PIECE = re.compile(r"<(?:start|end)_of_[a-z]+>|<unused\d+>|<mask>|<image_soft_token>|<\|[a-z_]+\|>")


class Tokenizer:
    """A SentencePiece model (e.g. Gemma's `tokenizer.model`) with Gemma's chat and fill-in-the-middle formats."""

    def __init__(self, model_proto: bytes, where: str = "tokenizer"):
        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except Exception as e:      # sentencepiece raises RuntimeError / OSError / protobuf errors on a bad model
            raise ValueError(f"{where}: not a SentencePiece model ({' '.join(str(e).split())[:200]})") from None
        eos = [self.eos_id] if self.eos_id >= 0 else []
        self._stop_ids = tuple(eos + self._present(END_OF_TURN))
        self._fim_stop_ids = tuple(self._present(FILE_SEPARATOR) + eos
                                   + self._present(FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a serialized SentencePiece model (`tokenizer.model`)."""
        return cls(Path(path).read_bytes(), str(path))

    @classmethod
    def from_bytes(cls, model_proto: bytes, where: str = "tokenizer") -> "Tokenizer":
        """Load a serialized SentencePiece `ModelProto` (`where`: what errors name)."""
        return cls(model_proto, where)

    def model_proto(self) -> bytes:
        """The serialized SentencePiece model, to store beside exported artifacts."""
        return self._proto

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to `path` atomically: readers see the old file or the complete new one."""
        write_atomic(path, self._proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        """The padding id, -1 if the model has none."""
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def __contains__(self, piece: str) -> bool:
        return self._sp.id_to_piece(self._sp.piece_to_id(piece)) == piece

    def id_of(self, piece: str) -> int:
        """The id of a vocabulary piece; KeyError if the vocabulary has no such piece."""
        if piece not in self:
            raise KeyError(f"{piece!r} is not in the tokenizer's vocabulary")
        return self._sp.piece_to_id(piece)

    def _present(self, *pieces: str) -> list[int]:
        """The ids of those `pieces` the vocabulary has."""
        return [self.id_of(p) for p in pieces if p in self]

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a chat reply: <eos>, and <end_of_turn> when the vocabulary has it."""
        return self._stop_ids

    @property
    def fim_stop_ids(self) -> tuple[int, ...]:
        """Ids that end a fill-in-the-middle completion (CodeGemma's list: <|file_separator|>, <eos>,
        <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>), those the vocabulary has."""
        return self._fim_stop_ids

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`, after <bos> if `add_bos`. Pieces such as <start_of_turn> written in the text
        become their single ids; control tokens (<bos>, <eos>, <pad>) never do."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        return self._sp.encode(text, add_bos=add_bos and self.bos_id >= 0)

    def decode(self, ids) -> str:
        """The text of `ids` (any iterable of ints); control tokens and ids past the tokenizer's pieces (the
        embedding may have more rows: Gemma 3 4B+'s 64, <image_soft_token> among them) decode to nothing."""
        n = self._sp.get_piece_size()
        return self._sp.decode([int(i) for i in ids if 0 <= int(i) < n])

    def encode_text(self, text: str) -> list[int]:
        """Token ids of text from a user (no <bos>): special pieces written in it (<start_of_turn>, <unusedN>,
        ...: SPECIAL_PIECE) are spelled as ordinary text, never their own ids, so a message cannot forge turns."""
        # cut each such piece after its "<": SentencePiece matches a piece only whole, and the text around the
        # cut still merges as ordinary text does
        cuts = [m.start() + 1 for m in SPECIAL_PIECE.finditer(text) if m.group() in self]
        return [i for a, b in zip([0, *cuts], [*cuts, len(text)]) for i in self._sp.encode(text[a:b])]

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """<bos> + chat_prompt(messages) as token ids, the messages' contents encoded by encode_text: the
        template's turn markers are the only <start_of_turn> / <end_of_turn> ids in the result."""
        ids = [self.bos_id] if self.bos_id >= 0 else []
        for before, text, after in self._turns(messages, add_generation_prompt):
            ids += self._sp.encode(before) + self.encode_text(text) + self._sp.encode(after)
        return ids

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Gemma's chat format, as its official chat template writes it (without <bos>: encode adds it).
        Special pieces inside the contents stay text here; chat_ids keeps them from becoming control ids.

        Roles are "user" and "assistant" (written "model"; "model" is accepted too), alternating and starting
        with "user"; an optional leading "system" message is put before the first user turn's text, followed
        by a blank line. Turn contents are stripped of surrounding whitespace, as the template does.
        """
        return "".join(b + t + a for b, t, a in self._turns(messages, add_generation_prompt))

    def _turns(self, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, str, str]]:
        """(template text before, content, template text after) of each turn of chat_prompt."""
        messages = list(messages)
        system = ""
        if messages and messages[0].get("role") == "system":
            system = _content(messages[0]) + "\n\n"
            messages = messages[1:]
            if not messages:
                raise ValueError("a system message must be followed by a user message")
        parts = []
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in _TURN_ROLES:
                raise ValueError(f"message {i}: unknown role {role!r} (expected 'user' or 'assistant'; "
                                 f"'system' only as the first message)")
            if (role == "user") != (i % 2 == 0):
                raise ValueError("conversation roles must alternate user/assistant/user/assistant/..., "
                                 f"starting with user; message {i} is {role!r}")
            text = (system if i == 0 else "") + _content(message).strip()
            before, after = TURN_TEMPLATES[_TURN_ROLES[role]]
            parts.append((before, text, after))
        if add_generation_prompt:
            parts.append((TURN_TEMPLATES["model"][0], "", ""))
        return parts

    def fim_prompt(self, prefix: str, suffix: str) -> str:
        """CodeGemma's fill-in-the-middle prompt; the model writes the code between `prefix` and `suffix`.

        ValueError if the vocabulary lacks the FIM tokens (Gemma 3 has none): they would be cut into pieces.
        """
        missing = [p for p in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE) if p not in self]
        if missing:
            raise ValueError(f"this vocabulary has no {', '.join(missing)}: fill-in-the-middle needs a "
                             f"CodeGemma tokenizer")
        return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def _content(message: dict) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise TypeError(f"message content must be a str, not {type(content).__name__}")
    return content


def _utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 character starting with `lead`; 0 if it cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    return 4 if 0xF0 <= lead <= 0xF4 else 0


class StreamDecoder:
    """Turns generated ids into text as they come: `push(id)` returns the text that id completes.

    A character split over byte-fallback pieces (<0xF0><0x9F>...) comes out with its last byte; bytes that
    cannot form a character become U+FFFD, one per byte, as SentencePiece's decode does. The pushed pieces
    plus `flush()` concatenate to `tokenizer.decode(ids)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._sp = tokenizer._sp
        self._bytes = bytearray()
        self._head: list[int] = []      # ids before the first text: decoded with SentencePiece's own rules
        self._started = False

    def push(self, token_id: int) -> str:
        """The text completed by `token_id` ("" while a character is incomplete or for control tokens)."""
        token_id = int(token_id)
        sp = self._sp
        if not 0 <= token_id < sp.get_piece_size():        # a row of the embedding the tokenizer has no piece for
            return ""
        if sp.is_byte(token_id):
            self._bytes.append(int(sp.id_to_piece(token_id)[3:5], 16))
            return self._emit(self._take_bytes(final=False))
        text = self._take_bytes(final=True)
        if text:
            self._started = True
        if not self._started:
            # At the start SentencePiece may drop a leading space (models with a dummy prefix): let it decide.
            surface = sp.decode(self._head + [token_id])
            self._head.append(token_id)
        elif sp.is_control(token_id):
            surface = ""
        elif sp.is_unknown(token_id):
            surface = sp.decode([token_id])
        else:
            surface = sp.id_to_piece(token_id).replace("\u2581", " ")
        return self._emit(text + surface)

    def flush(self) -> str:
        """The end of the stream: bytes still waiting for the rest of their character, as U+FFFD."""
        return self._emit(self._take_bytes(final=True))

    def _emit(self, text: str) -> str:
        if text:
            self._started = True
            self._head.clear()
        return text

    def _take_bytes(self, final: bool) -> str:
        """Decode the buffered bytes, keeping an incomplete trailing character unless `final`."""
        out, buf = [], self._bytes
        while buf:
            n = _utf8_length(buf[0])
            if n and len(buf) >= n:
                try:
                    out.append(bytes(buf[:n]).decode("utf-8"))
                    del buf[:n]
                    continue
                except UnicodeDecodeError:
                    pass
            elif n and not final and _is_utf8_prefix(bytes(buf)):
                break
            out.append("\ufffd")
            del buf[:1]
        return "".join(out)


def _is_utf8_prefix(data: bytes) -> bool:
    """Whether `data` (shorter than one character) can still become a valid UTF-8 character."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
        return True
    except UnicodeDecodeError:
        return False
