"""Textual-inversion embeddings (A1111 `emb_params` or diffusers `{token: tensor}` safetensors files).

As in A1111, a file `$SFUMATO_HOME/embeddings/NAME.safetensors` is used when NAME appears as a word
in the prompt or negative prompt; it is loaded once into the model's tokenizer and text encoder.
Multi-vector embeddings expand NAME into NAME NAME_1 ... in the prompt before tokenizing.
"""

from __future__ import annotations

import re


from sfumato.errors import UnsupportedModel
from sfumato.models.home import embeddings_dir, open_weights
from sfumato.models.loader import LoadedModel


def _vectors(path) -> int:
    with open_weights(path) as f:
        keys = list(f.keys())
        shape = f.get_slice(keys[0]).get_shape()
    return shape[0] if len(shape) == 2 else 1


def apply_embeddings(model: LoadedModel, texts: list[str]) -> dict[str, str]:
    """Load every embedding named in `texts`; returns {name: expansion} for the prompt encoder."""
    folder = embeddings_dir()
    if not folder.is_dir() or getattr(model.pipe, "tokenizer", None) is None:
        return {}
    words = set(re.findall(r"[\w\-]+", " ".join(texts)))
    expansions = {}
    for path in sorted(folder.glob("*.safetensors")):
        name = path.stem
        if name not in words:
            continue
        loaded = model.embeddings
        if name not in loaded:
            try:
                model.pipe.load_textual_inversion(str(path), token=name)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise UnsupportedModel(f"embedding {path} does not fit this model ({exc})") from None
            loaded[name] = _vectors(path)
        count = loaded[name]
        expansions[name] = " ".join([name] + [f"{name}_{i}" for i in range(1, count)])
    return expansions
