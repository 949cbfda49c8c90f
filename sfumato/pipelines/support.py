"""What each model family does, read from the family table (models.families) and the runners: the table behind
`sfumato families` and the README's per-family table, so the documentation cannot drift from the code."""

from __future__ import annotations

from sfumato.models.families import FAMILIES, Family
from sfumato.models.lora import takes_loras
from sfumato.pipelines.runners import runner_for
from sfumato.sampling.samplers import sampler_names

# the families a single file (or GGUF) loads for, with what it holds (models.singlefile, models.flowfile, models.gguf)
SINGLE_FILES = {"sd1": "A1111 .safetensors, GGUF", "sd2": "A1111 .safetensors, GGUF", "sdxl": "A1111 .safetensors, GGUF",
                "sdxl-refiner": "A1111 .safetensors", "sd3": "all-in-one or split .safetensors, GGUF transformer",
                "flux": "all-in-one or split .safetensors, GGUF transformer",
                "z-image": "split folder (transformer, Qwen3 and ae .safetensors, tokenizer/)",
                "chroma": "split folder (transformer, T5 and ae .safetensors, tokenizer/)",
                "qwen-image": "split folder (transformer, Qwen2.5-VL and VAE .safetensors, tokenizer/)"}
COLUMNS = ("family", "diffusers pipeline", "txt2img", "img2img", "inpaint", "LoRA", "ControlNet", "negative prompt",
           "samplers", "single file", "defaults")


def capabilities(family: Family) -> dict[str, str]:
    """One row of the table: what works with this family ("yes", "—", or what instead)."""
    kind = runner_for(family).kind
    yes, no = "yes", "—"
    row = {"family": family.name, "diffusers pipeline": family.pipeline_class,
           "single file": SINGLE_FILES.get(family.name, "folder"),
           "defaults": f"{family.default_sampler}, {family.default_steps} steps, CFG {family.default_cfg_scale:g}"}
    if kind == "unet":
        refiner = family.name == "sdxl-refiner"
        row.update({"txt2img": "second pass" if refiner else yes, "img2img": yes, "inpaint": yes, "LoRA": yes,
                    "ControlNet": no if refiner else yes, "negative prompt": yes,
                    "samplers": f"all {len(sampler_names())}"})
    elif kind == "video":
        spec = family.video
        made = [name for name, has in (("text-to-video", spec.text_to_video), ("image-to-video", spec.image_to_video))
                if has]
        row.update({"txt2img": " and ".join(made) + " clips (animate --mode video-model)", "img2img": no,
                    "inpaint": no, "LoRA": yes if takes_loras(family.name) else no, "ControlNet": no,
                    "negative prompt": yes if spec.prompt else no,
                    "samplers": f"its own ({family.default_sampler})"})
    elif kind == "flow":
        spec = family.flow
        samplers = spec.samplers or sampler_names(spec.flow)
        row.update({"txt2img": yes + (" (edits a reference image)" if spec.reference else ""),
                    "img2img": yes if False in spec.edits else no,
                    "inpaint": "yes (+ Fill models)" if spec.fill else yes if True in spec.edits else no,
                    "LoRA": yes if takes_loras(family.name) else no,
                    "ControlNet": yes if spec.control else no, "negative prompt": yes if spec.negative else no,
                    "samplers": f"all {len(samplers)}" if spec.samplers is None else ", ".join(samplers)})
    else:  # PixArt, DiT, LDM-VQ, Kandinsky: txt2img through their pipelines
        row.update({"txt2img": yes, "img2img": no, "inpaint": no, "LoRA": no, "ControlNet": no,
                    "negative prompt": no if family.name in ("dit", "ldm-vq") else yes,
                    "samplers": f"all {len(sampler_names())}" if kind == "transformer"
                    else "unit-scale ones (DDIM, PLMS, DPM++ 2M, UniPC, …)"})
    return row


def family_samplers(family: Family) -> list[str]:
    """The sampler names a family's models take (the UI offers these; others are refused in one line)."""
    if family.video is not None:
        return [family.default_sampler]
    if family.flow is not None:
        return list(family.flow.samplers or sampler_names(family.flow.flow))
    return sampler_names(family.prediction_type == "flow")


def markdown_table() -> str:
    rows = [capabilities(family) for family in FAMILIES.values()]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
