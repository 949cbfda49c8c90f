"""The models home (`SFUMATO_HOME`, default `~/.sfumato`): where names resolve to files, and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sfumato.errors import ModelNotFound, PickleRefused, UnsupportedModel

SAFE_SUFFIXES = (".safetensors", ".gguf")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
EMBEDDED_ROOT = Path(__file__).parent / "embedded"  # the models shipped in the package (models.embedded)
EMBEDDED_NAMES = ("sfumato-scenes", "sfumato-emoji")  # the default first


def home() -> Path:
    return Path(os.environ.get("SFUMATO_HOME", Path.home() / ".sfumato")).expanduser()


def checkpoints_dir() -> Path:
    return home() / "models" / "checkpoints"


def loras_dir() -> Path:
    return home() / "models" / "loras"


def vaes_dir() -> Path:
    """VAE overrides (A1111's `models/VAE`): single `.safetensors` files or diffusers `AutoencoderKL` folders."""
    return home() / "models" / "vae"


def embeddings_dir() -> Path:
    """Textual-inversion embeddings, used when their file name appears in a prompt (A1111)."""
    return home() / "embeddings"


def resolve(name: str, kind: str = "checkpoint") -> Path:
    """Turn a path or a bare name (looked up in the models home) into an existing path."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if kind == "checkpoint" and name in EMBEDDED_NAMES and (EMBEDDED_ROOT / name / "model_index.json").exists():
        return EMBEDDED_ROOT / name
    folder = {"checkpoint": checkpoints_dir, "vae": vaes_dir}.get(kind, loras_dir)()
    candidates = [folder / name] + [folder / f"{name}{suffix}" for suffix in SAFE_SUFFIXES + PICKLE_SUFFIXES]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ModelNotFound(f"{kind} {name!r} not found (not a path, and not in {folder})")


def find_named(name: str, kind: str = "lora") -> Path:
    """A bare name inside the models home, never a path (what a server accepts from the network): a name with a
    separator, a `..`, or one that is not there get the same answer, so answers tell nothing about other files."""
    folder = {"checkpoint": checkpoints_dir, "vae": vaes_dir}.get(kind, loras_dir)()
    plain = name.strip()
    if plain and "/" not in plain and "\\" not in plain and plain not in (".", "..") and "\x00" not in plain:
        for candidate in [folder / plain] + [folder / f"{plain}{suffix}" for suffix in SAFE_SUFFIXES]:
            if candidate.suffix in SAFE_SUFFIXES and candidate.is_file():
                return candidate
    raise ModelNotFound(f"{kind} {name!r} not found in the models home (list the names with `sfumato models`)")


def refuse_pickle(path: Path) -> None:
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise PickleRefused(str(path))


def open_weights(path: Path):
    """`safe_open` on a weights file, with pickle refused and a broken file reported as one clear error."""
    from safetensors import SafetensorError, safe_open

    refuse_pickle(Path(path))
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise UnsupportedModel(f"{path} is not a readable .safetensors file ({first})") from None


def weight_files(path: Path) -> list[Path]:
    """The files whose bytes define a model: the file itself, or a diffusers folder's weights and configs."""
    if path.is_file():
        return [path]
    files = [p for p in path.rglob("*") if p.is_file() and (p.suffix in SAFE_SUFFIXES or p.suffix == ".json")]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def sha256(path: Path) -> str:
    """SHA-256 of a file (A1111's model hash), or of a folder's weight and config files, cached by size and mtime."""
    files = weight_files(path)
    stamp = [[p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache_file = home() / "cache" / "hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    key = str(path.resolve())
    if key in cache and cache[key]["stamp"] == stamp:
        return cache[key]["sha256"]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only home only costs speed
    return cache[key]["sha256"]


def short_hash(path: Path) -> str:
    """A1111's short model hash: the first 10 hex digits of the SHA-256."""
    return sha256(path)[:10]


def list_vaes() -> list[Path]:
    """VAE files and folders in $SFUMATO_HOME/models/vae."""
    folder = vaes_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() and p.suffix == ".safetensors") or (p.is_dir() and vae_folder(p) is not None))


def vae_folder(path: Path) -> Path | None:
    """The diffusers VAE folder at `path` (or its vae/ subfolder), None when there is none."""
    for candidate in (path, path / "vae"):
        if (candidate / "config.json").exists():
            return candidate
    return None
