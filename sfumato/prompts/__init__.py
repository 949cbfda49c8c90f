"""Prompt text -> conditioning: A1111 emphasis, BREAK, long prompts, LoRA tags, Midjourney flags."""

from sfumato.prompts.attention import parse_prompt_attention
from sfumato.prompts.flags import PromptFlags, split_flags
from sfumato.prompts.lora_tags import extract_lora_tags

__all__ = ["PromptFlags", "extract_lora_tags", "parse_prompt_attention", "split_flags"]
