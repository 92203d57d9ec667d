"""A small byte-level BPE tokenizer trained locally, for the tiny CPU model and for tests.

No tokenizer can be downloaded at run time, so the tiny default model uses this one:
byte-level (any text round-trips), step tags as single special tokens, and a few hundred
merges learned from math-flavoured text so sequences stay short.
"""

from __future__ import annotations

import os
from typing import Sequence

from rstar_jax.step_format import SPECIAL_TOKENS

EOS = "<|endoftext|>"
PAD = "<|pad|>"

_CORPUS = [
    "Let's think step by step and solve the problem with code.",
    "<code>\n# Step 1: compute the sum of the numbers\nx = 3 + 4\nprint(x)\n<end_of_step>",
    "# Now print the final answer\nprint(result)\n<end_of_code>\n<output>7<end_of_output>",
    "<answer>The answer is \\boxed{7}.<end_of_answer>",
    "import sympy as sp\nfrom sympy import symbols, solve, Rational, sqrt, simplify\n",
    "import math\nimport numpy as np\nresult = math.comb(10, 3) * 2 - 1\n",
    "def f(n):\n    return n * (n + 1) // 2\nfor i in range(10):\n    total += i\n",
    "What is the value of 12 * 7 - 5? Find the remainder when 2^10 is divided by 7.",
    "A train travels 60 miles per hour for 3 hours. How many miles does it travel?",
    "Solve for x: 2x + 3 = 11. The solution is x = 4. Simplify the fraction 6/8.",
    "0123456789 + - * / = ( ) [ ] { } ^ , . : ; ' \" \\frac \\sqrt \\pi \\cdot",
]


def build_tiny_tokenizer(save_dir: str | os.PathLike | None = None, vocab_size: int = 512, *,
                         extra_corpus: Sequence[str] = (), split_digits: bool = False):
    """A `PreTrainedTokenizerFast` with the step tags, EOS and PAD as special tokens.

    `extra_corpus` adds text to learn merges from (the tiny self-evolution run passes its
    problems and solutions, so its sequences stay short); `split_digits` makes every
    digit its own token, which a tiny model copies and computes with more easily.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, PAD, *SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4 + list(extra_corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=list(SPECIAL_TOKENS))
    if save_dir is not None:
        fast.save_pretrained(os.fspath(save_dir))
    return fast
