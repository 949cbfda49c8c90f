"""A random diffusers-format LoRA on a pipeline's transformer, saved as diffusers' loaders read it (for the tests
that compare sfumato's LoRA loading with `load_lora_weights`)."""

from __future__ import annotations

from pathlib import Path

import torch

WIDE = ["to_q", "to_k", "to_v", "to_out.0", "proj_out"]  # a visible change on tiny random transformers


def random_lora(pipe, out: Path, targets: list[str] = WIDE, std: float = 2.0) -> Path:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(1)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets))
    for name, param in pipe.transformer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=std)
    type(pipe).save_lora_weights(str(out), safe_serialization=True,
                                 transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    return Path(out) / "pytorch_lora_weights.safetensors"
