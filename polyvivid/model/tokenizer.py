"""A byte-level tokenizer that needs no vocabulary download: used by the tiny preset.

Real checkpoints bring their own tokenizers (LLaVA-Llama-3's and CLIP's), loaded from their
directories; this one only has to turn any text into ids and know the chat-template specials.
"""

from __future__ import annotations

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<image>", "<pad>"]


def byte_tokenizer(clip: bool = False):
    """clip=True wraps every text in begin/end-of-text as CLIP's tokenizer does: CLIPTextModel pools at
    the end-of-text token, and without one it pools the first token (the same for every "A ..." caption)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    bos, eos = SPECIAL_TOKENS[:2]
    if clip:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos,
        pad_token="<pad>", model_max_length=1024,
    )
