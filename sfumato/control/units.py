"""A control unit: one control image, its preprocessor, model and strength (A1111 ControlNet extension semantics).

Requests carry units as plain dicts (JSON, PNG records); `ControlUnit.from_dict` validates and normalises them,
accepting the A1111 extension's spellings (`"Crop and Resize"`, `"My prompt is more important"`, 0/1/2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sfumato.errors import InvalidRequest

CONTROL_MODES = ("balanced", "prompt", "control")
RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")
MODE_NAMES = {"Balanced": "balanced", "My prompt is more important": "prompt",
              "ControlNet is more important": "control"}
RESIZE_NAMES = {"Just Resize": "just_resize", "Crop and Resize": "crop_and_resize", "Resize and Fill": "resize_and_fill",
                "Envelope (Outer Fit)": "resize_and_fill", "Scale to Fit (Inner Fit)": "crop_and_resize"}
MAX_UNITS = 8


@dataclass
class ControlUnit:
    image: str  # path of the control image (or of a ready map, with module "none")
    module: str = "none"  # the preprocessor (annotator)
    model: str | None = None  # ControlNet / T2I-Adapter name or path; None: the shipped one for the embedded model
    weight: float = 1.0
    guidance_start: float = 0.0  # fraction of the steps
    guidance_end: float = 1.0
    control_mode: str = "balanced"  # balanced / prompt (my prompt is more important) / control (ControlNet is ...)
    resize_mode: str = "crop_and_resize"
    processor_res: int | None = None  # None: pixel perfect (the output's size)
    threshold_a: float | None = None  # preprocessor settings (None: its default)
    threshold_b: float | None = None
    pixel_perfect: bool = False
    mask: str | None = None  # for the inpaint preprocessor: white = to repaint
    effective_region_mask: str | None = None  # white = where this unit's control applies (A1111's field name)

    @classmethod
    def from_dict(cls, data: Any, index: int = 0) -> "ControlUnit":
        where = f"control unit {index}"
        if not isinstance(data, dict):
            raise InvalidRequest(f"{where} must be an object with at least an image")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(f"{where}: unknown field(s) {', '.join(unknown)}")
        values = {k: v for k, v in data.items()
                  if v is not None or k in ("model", "processor_res", "mask", "effective_region_mask")}
        if not isinstance(values.get("image"), str) or not values.get("image"):
            raise InvalidRequest(f"{where} needs an image")
        values["control_mode"] = _choice(values.get("control_mode", "balanced"), CONTROL_MODES, MODE_NAMES,
                                         f"{where} control_mode")
        values["resize_mode"] = _choice(values.get("resize_mode", "crop_and_resize"), RESIZE_MODES, RESIZE_NAMES,
                                        f"{where} resize_mode")
        unit = cls(**values)
        for name in ("module", "image"):
            if not isinstance(getattr(unit, name), str):
                raise InvalidRequest(f"{where} {name} must be a string")
        for name in ("model", "mask", "effective_region_mask"):
            if getattr(unit, name) is not None and not isinstance(getattr(unit, name), str):
                raise InvalidRequest(f"{where} {name} must be a string or null")
        if not isinstance(unit.pixel_perfect, bool):
            raise InvalidRequest(f"{where} pixel_perfect must be true or false")
        _number(unit.weight, 0.0, 2.0, f"{where} weight")
        _number(unit.guidance_start, 0.0, 1.0, f"{where} guidance_start")
        _number(unit.guidance_end, 0.0, 1.0, f"{where} guidance_end")
        if unit.guidance_start > unit.guidance_end:
            raise InvalidRequest(f"{where}: guidance_start {unit.guidance_start} is after guidance_end "
                                 f"{unit.guidance_end}")
        if unit.processor_res is not None and unit.processor_res != -1:
            if isinstance(unit.processor_res, bool) or not isinstance(unit.processor_res, int):
                raise InvalidRequest(f"{where} processor_res must be an integer")
            _number(unit.processor_res, 16, 4096, f"{where} processor_res")
        if unit.processor_res == -1:
            unit.processor_res = None
        for name in ("threshold_a", "threshold_b"):
            value = getattr(unit, name)
            if value is not None:
                _number(value, -1.0, 2**31 - 1, f"{where} {name}")
                if value < 0:  # A1111 sends -1 for "the preprocessor's default"
                    setattr(unit, name, None)
        from sfumato.control.preprocessors import get

        unit.module = get(unit.module).name
        if unit.is_reference:  # the extension ignores a reference unit's model ("None")
            unit.model = None
        return unit

    @property
    def is_reference(self) -> bool:
        """A reference-only unit: the image steers the UNet's own attention, no control model (pipelines.reference)."""
        from sfumato.control.preprocessors import REFERENCE_MODULES

        return self.module in REFERENCE_MODULES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def active(self, step: int, steps: int) -> bool:
        """diffusers' rule: on at step `i` unless i/steps < start or (i+1)/steps > end."""
        return not (step / steps < self.guidance_start or (step + 1) / steps > self.guidance_end)


def parse_units(units: Any) -> list[ControlUnit]:
    if not isinstance(units, list):
        raise InvalidRequest("controls must be a list of control units")
    if len(units) > MAX_UNITS:
        raise InvalidRequest(f"at most {MAX_UNITS} control units per request, got {len(units)}")
    return [ControlUnit.from_dict(u, i) for i, u in enumerate(units)]


def _choice(value: Any, allowed: tuple[str, ...], names: dict[str, str], what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(allowed):
        return allowed[value]
    if isinstance(value, str):
        key = names.get(value, value.strip().lower().replace(" ", "_"))
        if key in allowed:
            return key
    raise InvalidRequest(f"{what} must be one of {', '.join(allowed)}, got {value!r}")


def _number(value: Any, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{what} must be a number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{what} must be between {low:g} and {high:g}, got {value}")
