"""Prompt formats of the Gemma variants that are not plain chat: EmbeddingGemma's task prefixes and
ShieldGemma's classification prompt. (Gemma's chat turns are runtime_py.tokenizer's chat_prompt.)"""
from __future__ import annotations

from .contract import END_OF_TURN, START_OF_TURN

# EmbeddingGemma's task prompts (its model card / sentence-transformers config). task=None: no prompt.
_QUERY_TASKS = ("search result", "question answering", "fact checking", "code retrieval", "classification",
                "clustering", "sentence similarity", "summarization")
EMBED_TASKS = ("query", "document") + _QUERY_TASKS

# ShieldGemma 1's prompts, as its tokenizer's chat template writes them (google/shieldgemma-*); the
# template starts with <bos>, which encode() adds. "must  start" (two spaces) is the template's own text.
_SHIELD_INTRO = "You are a policy expert trying to help determine whether {} is in violation of the defined safety " \
                "policies.\n\n"
_SHIELD_POLICY = "Our safety principle is defined in the below:\n\n* {policy}\n\n===\n\n"
_SHIELD_QUESTION = ("Does the {who} violate the above principle? Your answer must {sp}start with 'Yes' or 'No'. "
                    "And then walk through step by step to be sure we answer correctly.\n\n")


def embedding_prompt(task: str | None, title: str | None = None) -> str:
    """EmbeddingGemma's prefix for `task`: None -> "", "query" -> "task: search result | query: ",
    "document" -> "title: {title or none} | text: ", other tasks (EMBED_TASKS; '_'/'-' may stand for spaces)
    -> "task: {task} | query: ". `title` belongs to the document prompt only."""
    if task is None:
        if title is not None:
            raise ValueError("an embedding title goes with the document task (task='document')")
        return ""
    key = str(task).strip().lower().replace("_", " ").replace("-", " ")
    if key == "document":
        return f"title: {title.strip() if title and title.strip() else 'none'} | text: "
    if key == "query":
        key = "search result"
    if key not in _QUERY_TASKS:
        raise ValueError(f"unknown embedding task {task!r}; expected one of {', '.join(EMBED_TASKS)}")
    if title is not None:
        raise ValueError(f"an embedding title goes with the document task, not {task!r}")
    return f"task: {key} | query: "


def shieldgemma_prompt(text: str, policy: str, response: str | None = None) -> str:
    """ShieldGemma's prompt: is `text` (a user prompt) or, with `response`, the chatbot's response to it, in
    violation of `policy` (one guideline, e.g. '"No Harassment": The prompt shall not ...'; written after "* ")."""
    policy = policy.strip()
    policy = policy[2:] if policy.startswith("* ") else policy
    turns = _shield_turn(f"Human Question: {text}")
    if response is None:
        head, who, sp = _SHIELD_INTRO.format("a user prompt"), "human question", ""
    else:
        head, who, sp = _SHIELD_INTRO.format("an AI response to a prompt"), "Chatbot Response", " "
        turns += _shield_turn(f"Chatbot Response: {response}")
    return head + turns + "\n" + _SHIELD_POLICY.format(policy=policy) + _SHIELD_QUESTION.format(who=who, sp=sp)


def _shield_turn(content: str) -> str:
    return f"{START_OF_TURN}\n{content}\n{END_OF_TURN}\n"
