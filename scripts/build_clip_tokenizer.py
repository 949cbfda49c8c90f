"""Build the CLIP BPE tokenizer files shipped in `sfumato/models/configs/tokenizers/clip/`.

The byte-pair vocabulary comes from the PyPI wheel of open-clip-torch (MIT licence),
fetched with `pip download --no-deps` so none of its vision dependencies get installed. The output is
the Hugging Face `vocab.json` + `merges.txt` pair that `transformers.CLIPTokenizer` reads,
identical in content to the tokenizer of openai/clip-vit-large-patch14.

    python scripts/build_clip_tokenizer.py [OUT_DIR]
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "sfumato/models/configs/tokenizers/clip"
N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode table used by CLIP's BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}  # order matters: it fixes the token ids
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def fetch_bpe_text() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "open-clip-torch==3.3.0", "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            return gzip.decompress(zf.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")


def build(out_dir: Path) -> None:
    lines = fetch_bpe_text().split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    print(f"wrote {len(tokens)} tokens and {len(merges)} merges to {out_dir}")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
