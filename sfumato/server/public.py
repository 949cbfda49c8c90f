"""What the server shows of its own files: names, never absolute paths, in error bodies and job records.

Engine errors name the files they are about ("LoRA /home/u/.sfumato/models/loras/x.safetensors must be ..."), and
job records keep the paths the worker needs. Over the network both are shown through `Names`: a file the server
lists (a model, LoRA, VAE or control model) by its listed name, any other path under the server's own folders (the
models home, the data folder, the working and home directories, the package) by its last component.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sfumato.models.home import home

_TOKEN_END = " \t\n'\"),;]}"


class Names:
    """Path -> name for one server: the listed files first, then the server's folders."""

    def __init__(self, listed: dict[str, str], folders: list[Path]):
        self.listed = sorted(((path, name) for path, name in listed.items() if path), key=lambda p: -len(p[0]))
        roots = {str(Path(f).expanduser().resolve()) for f in folders} | {str(Path(f).expanduser()) for f in folders}
        self.roots = sorted((r.rstrip("/") for r in roots if r not in ("", "/")), key=len, reverse=True)

    @classmethod
    def of(cls, service) -> Names:
        listed: dict[str, str] = {}
        for registry in (service.models, service.loras, service.control_models, service.vaes):
            listed.update({str(path): name for name, path in registry.items()})
        folders = [home(), service.settings.data_dir, Path.cwd(), Path.home(), Path(tempfile.gettempdir()),
                   Path(__file__).resolve().parents[2]]  # the folder the package lies in
        folders += [Path(p).parent for p in service.models.values() if Path(p).is_absolute()]
        return cls(listed, folders)

    def text(self, message: str) -> str:
        """`message` with every listed path replaced by its name and every path under a root by its last part."""
        for path, name in self.listed:
            if path in message:
                message = message.replace(path, name)
        for root in self.roots:
            message = _shorten(message, root)
        return message

    def record(self, value: Any) -> Any:
        """A job record (nested dicts, lists and strings) with `text` applied to every string."""
        if isinstance(value, str):
            return self.text(value) if "/" in value or "\\" in value else value
        if isinstance(value, dict):
            return {key: self.record(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.record(item) for item in value]
        return value


def _shorten(message: str, root: str) -> str:
    """Each `ROOT/...` token of `message` -> its last path component (one pass per root)."""
    out, position = [], 0
    while (found := message.find(root, position)) >= 0:
        end = found + len(root)
        if end < len(message) and message[end] not in "/" + _TOKEN_END:
            out.append(message[position:end])  # a longer name that only starts like the root
            position = end
            continue
        while end < len(message) and message[end] not in _TOKEN_END:
            end += 1
        token = message[found:end].rstrip("/.:")
        out += [message[position:found], token.rsplit("/", 1)[-1] or "."]
        position = found + len(token)
    out.append(message[position:])
    return "".join(out)
