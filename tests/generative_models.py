"""Tiny random generative models saved as local HF folders, with a tokenizer that needs no
download (ByT5's byte tokenizer), and small text-to-text tables, for the generation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

VOCAB = 384  # ByT5Tokenizer: 3 special tokens, 256 bytes, 125 extra ids


def save_tiny_llama(folder: Path) -> Path:
    """A 2-layer, 16-wide random LLaMA causal LM (q_proj/v_proj linear layers)."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def save_tiny_t5(folder: Path) -> Path:
    """A 2-layer, 16-wide random T5 encoder-decoder."""
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                      num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def sentiment_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Short reviews with a pos/neg label and a one-word summary."""
    rng = np.random.default_rng(seed)
    words = {"pos": ["good", "great"], "neg": ["bad", "dull"]}
    rows = []
    for _ in range(n):
        label = str(rng.choice(["pos", "neg"]))
        word = str(rng.choice(words[label]))
        rows.append({"text": f"it was {word}", "label": label, "summary": word})
    return pd.DataFrame(rows)
