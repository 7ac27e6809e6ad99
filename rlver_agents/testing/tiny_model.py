"""A tiny random Qwen2 checkpoint with a tokenizer trained in-process: no download.

The tests build it for every model-side check, and the GPU smoke check (which runs from the
wheel on a machine without the tests) builds it on the device it checks.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TAGS = ["<think>", "</think>"]
CORPUS = [
    "I feel so tired and nobody at work listens to me.",
    "That sounds exhausting; it makes sense you feel unheard.",
    "My sister did not call me on my birthday.",
    "You wanted her to remember you, that hurts.",
    "Thank you for listening, I feel a little better now.",
    "What happened today? Tell me more about it.",
    "system user assistant hello hi how are you fine sad happy angry calm",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_checkpoint(
    target: Path,
    *,
    seed: int = 0,
    think_tags: bool = True,
    max_position_embeddings: int = 1024,
) -> Path:
    """Save a 2-layer random Qwen2 and a byte-level BPE tokenizer with a chat template to
    ``target``; ``think_tags`` adds ``<think>`` and ``</think>`` as single tokens."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer)
    bpe = json.loads(core.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    if think_tags:
        tokenizer.add_tokens(THINK_TAGS)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float().eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
