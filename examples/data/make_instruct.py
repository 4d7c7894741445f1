"""Write examples/data/instruct.jsonl: small synthetic instructions with one right answer each.

Each line is {"prompt": ..., "completion": ...}: reverse a word, upper-case it, sort its letters, add
two numbers or count a letter. A byte-level model learns the answer's format within a few dozen steps
and the rules themselves more slowly, so a short run of recipes/instruct.yaml shows the completion loss
falling. The output is a pure function of SEED and COUNT (run `python examples/data/make_instruct.py`
from the repository root; the committed file is its output).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 13
COUNT = 3000
OUT = Path(__file__).resolve().parent / "instruct.jsonl"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))


def example(rng: random.Random) -> dict[str, str]:
    task = rng.choice(("reverse", "upper", "sort", "add", "count"))
    if task == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return {"prompt": f"add {a} and {b}\nanswer: ", "completion": str(a + b)}
    word = _word(rng)
    if task == "count":
        letter = rng.choice(word)
        return {"prompt": f"count {letter} in {word}\nanswer: ", "completion": str(word.count(letter))}
    answer = {"reverse": word[::-1], "upper": word.upper(), "sort": "".join(sorted(word))}[task]
    return {"prompt": f"{task} {word}\nanswer: ", "completion": answer}


def main() -> None:
    rng = random.Random(SEED)
    lines = [json.dumps(example(rng)) for _ in range(COUNT)]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {COUNT} examples, {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
