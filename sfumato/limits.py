"""One budget for everything a request can make sfumato do: text to parse, pixels to make, frames to decode and
body bytes to read. Every path that turns input into work checks it here, so no small input costs unbounded time
or memory.

The server fills `Limits` from its flags (`sfumato serve --max-side ...`); the CLI and the library use `LOCAL`,
which allows everything a request may ask for but still bounds text work and decoded pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfumato.errors import InvalidRequest


class OverBudget(InvalidRequest):
    """An input asks for more pixels, frames, bytes or text work than the budget allows (HTTP 413)."""

    http_status = 413


@dataclass(frozen=True)
class Limits:
    """Largest accepted values; anything beyond is refused with one line (HTTP 422 or 413)."""

    # pixels and work
    max_side: int = 2048
    max_pixels: int = 2048 * 2048  # any image made: a generation, a hires/SD upscale target, a control map
    max_steps: int = 150
    max_images: int = 16  # images per request (n, batch_size x n_iter)
    max_frames: int = 240  # frames per animation
    max_upload_bytes: int = 20 * 2**20
    max_upload_pixels: int = 4096 * 4096  # an uploaded image, one decoded video frame, an upscaler's input
    max_decoded_pixels: int = 64 * 2**20  # all frames decoded from one video or animated image (~190 MB of RGB)
    max_upscaled_pixels: int = 8192 * 8192  # extras / upscale output
    # text: every field that reaches the prompt parsers, the encoder or the prompt policy
    max_prompt_chars: int = 4000  # per text field (prompt, negative, each direction, p2p source, keyframe, scene)
    max_and_parts: int = 32  # composable-diffusion `AND` parts per prompt
    max_nesting: int = 32  # nested emphasis / editing brackets
    max_png_text_chars: int = 64 * 1024  # text chunks read from an uploaded PNG
    # request bodies (the server), enforced while they stream in, before parsing
    max_body_bytes: int = 64 * 2**20  # routes that take images (base64 JSON or multipart)
    max_text_body_bytes: int = 2**20  # every other route

    def check_size(self, width: int, height: int, what: str = "image") -> None:
        """An image about to be made: each side and the area within the budget."""
        for name, value in (("width", width), ("height", height)):
            if value > self.max_side:
                raise InvalidRequest(f"{what} {name} {value} is larger than the limit of {self.max_side}")
        check_pixels(width, height, self.max_pixels, what)

    def check_text(self, text: str, what: str = "prompt") -> None:
        """One text field: its length, its bracket nesting and its number of AND parts."""
        if not isinstance(text, str):
            raise InvalidRequest(f"{what} must be a string")
        if len(text) > self.max_prompt_chars:
            raise InvalidRequest(f"{what} is longer than {self.max_prompt_chars} characters ({len(text)})")
        depth = nesting(text)
        if depth > self.max_nesting:
            raise InvalidRequest(f"{what} nests brackets {depth} deep; at most {self.max_nesting}")
        parts = and_parts(text)
        if parts > self.max_and_parts:
            raise InvalidRequest(f"{what} has {parts} AND parts; at most {self.max_and_parts}")

    def check_texts(self, texts: list[tuple[str, str]]) -> None:
        """Every (field, text) of a request (`GenerationRequest.texts`)."""
        for what, text in texts:
            self.check_text(text, what)

    def check_generation(self, width: int, height: int, hires_scale: float = 1.0, sd_upscale: float = 1.0) -> None:
        """A generation's size, and the sizes its hires fix and SD upscale will make."""
        self.check_size(width, height)
        for factor, what in ((hires_scale, "the hires fix image"), (sd_upscale, "the SD upscale image")):
            if factor > 1:
                check_pixels(round(width * factor), round(height * factor), self.max_pixels, what)


def check_pixels(width: int, height: int, budget: int, what: str = "image",
                 error: type[InvalidRequest] = InvalidRequest) -> None:
    """The one pixel check every path calls before it decodes or allocates an image of `width` x `height`: an image
    to make is an invalid request (422), an input too large to decode is `OverBudget` (413)."""
    if width < 1 or height < 1:
        raise error(f"{what} has no pixels ({width}x{height})")
    if width * height > budget:
        raise error(f"{what} of {width}x{height} is more than the limit of {budget} pixels")


def nesting(text: str) -> int:
    """The deepest nesting of `(`, `[` and `{` brackets (escaped ones ignored): one pass, no recursion."""
    depth = deepest = 0
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}" and depth:
            depth -= 1
    return deepest


def and_parts(text: str) -> int:
    """How many composable-diffusion parts `a AND b` splits into (the word AND between non-word characters)."""
    count, start = 1, 0
    while (found := text.find("AND", start)) >= 0:
        before = text[found - 1] if found else " "
        after = text[found + 3] if found + 3 < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            count += 1
        start = found + 3
    return count


LOCAL = Limits(max_side=4096, max_pixels=4096 * 4096, max_steps=150, max_images=64 * 1000, max_frames=10_000,
               max_upload_bytes=2**31, max_upload_pixels=16384 * 16384, max_decoded_pixels=2**31,
               max_upscaled_pixels=32768 * 32768, max_body_bytes=2**31, max_text_body_bytes=2**31)
