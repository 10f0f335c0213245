#!/usr/bin/env python3
"""Extra tokenizer cases for Tests/Fixtures/tokenizers/<name>/extra.jsonl, computed by the Python `tokenizers`
library (pip install tokenizers) on random strings drawn from many scripts, whitespace runs, digits, special-token
text and invalid-looking byte sequences. Deterministic: the same seed gives the same file.

    python3 Scripts/make_tokenizer_cases.py Tests/Fixtures/tokenizers
"""
import json
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer

PIECES = [
    "hello", "World", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "DON'T", "she'll", "'s", "'ve", "12", "3.14",
    "2024-01-01", "___", "--", "!!", "?", "...", "(x)", "[a]", "{b}", "<s>", "</s>", "<unk>", "<|im_start|>",
    "<|im_end|>", "<|endoftext|>", "<s", "|>", "é", "e\u0301", "ß", "Ω", "ж", "Привет", "日本語", "中文", "한국어",
    "ไทย", "العربية", "עברית", "हिन्दी", "🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷", "\u00a0", "\u2009", "\u200b", "\ufeff",
    "\u2581", "Ġ", "\u00ff", "\u0100", "𝔘𝔫𝔦", "\U0001F600", "x" * 40, "ab" * 30, "tab\tsep", "CamelCaseWord",
    "snake_case_word", "<0x41>", "\\n", "\"quoted\"", "`code`", "#", "@", "$5", "%", "&amp;",
]


def random_text(rng: random.Random) -> str:
    n = rng.randint(1, 12)
    return "".join(rng.choice(PIECES) for _ in range(n))


def main() -> None:
    root = Path(sys.argv[1])
    for name in ["mixtral", "mixtral-metaspace", "qwen2"]:
        tok = Tokenizer.from_file(str(root / name / "tokenizer.json"))
        rng = random.Random(20261201)
        lines = []
        for k in range(300):
            text = random_text(rng)
            ids = tok.encode(text, add_special_tokens=True).ids
            lines.append(json.dumps({
                "name": f"random_{k}",
                "text": text,
                "ids": ids,
                "ids_no_special": tok.encode(text, add_special_tokens=False).ids,
                "decoded": tok.decode(ids, skip_special_tokens=True),
                "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
            }, ensure_ascii=False))
        (root / name / "extra.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
