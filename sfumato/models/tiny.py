"""Tiny random-weight models in the real architecture families, for tests, benchmarks and demos.

`build_tiny("sd1", out)` writes a diffusers folder that loads and generates like a real SD 1.x
model (same classes, same key layout, same tokenizer) in milliseconds per step.
"""

from __future__ import annotations

import json

import re
from pathlib import Path

import torch

from sfumato.models.families import FAMILIES, TINY_FAMILIES
from sfumato.models import tiny_flow, tiny_video
from sfumato.models.singlefile import clip_tokenizer
from sfumato.models.tiny_flow import tiny_t5_tokenizer


def _text_config(act: str, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
        max_position_embeddings=77, hidden_act=act, projection_dim=projection, bos_token_id=0, eos_token_id=2,
        pad_token_id=1,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
    )


def tiny_bert():
    """A 2-layer random BERT with the real MiniLM (uncased WordPiece) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sfumato.models.loader import text_encoder_dir
    from sfumato.models.loader import MINILM

    tokenizer = AutoTokenizer.from_pretrained(str(text_encoder_dir(MINILM)), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval(), tokenizer


def _tiny_ldm(scheduler):
    """The embedded model's family: UNet + small VAE + BERT-style encoder, pooled vector as class embedding."""
    import diffusers
    from diffusers import UNet2DConditionModel

    encoder, tokenizer = tiny_bert()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        norm_num_groups=32, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=32,
    )
    scheduler = diffusers.DDPMScheduler.from_config({**scheduler.config, "clip_sample": False})
    return diffusers.StableDiffusionPipeline(unet=unet, vae=_vae(), text_encoder=encoder, tokenizer=tokenizer,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)


def _tiny_sd3():
    """SD3 layout (MMDiT transformer, two CLIP encoders with projection, a 16-latent-channel VAE as the real SD3's:
    diffusers' SD3 inpaint pipeline requires it), no T5."""
    import diffusers
    from transformers import CLIPTextModelWithProjection

    transformer = diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=16,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=16, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(_text_config("gelu")), tokenizer=clip_tokenizer("!"),
        text_encoder_2=CLIPTextModelWithProjection(_text_config("gelu")), tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=None, tokenizer_3=None,
    )


def _tiny_vae():
    import diffusers

    return diffusers.AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32)


def _tiny_pixart():
    """PixArt-Σ layout (PixArtTransformer2DModel with learned sigma and adaLN-single, T5 encoder), DPM-Solver."""
    import diffusers
    from transformers import T5Config, T5EncoderModel

    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=16,
        patch_size=2, cross_attention_dim=16, caption_channels=32, norm_num_groups=32)
    tokenizer = tiny_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    return diffusers.PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=t5, vae=_tiny_vae(), transformer=transformer,
                                         scheduler=diffusers.DPMSolverMultistepScheduler())


DIT_LABELS = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 207: "golden retriever", 281: "tabby, tabby cat",
              948: "Granny Smith"}  # a few ImageNet classes for the tiny DiT (the real models carry all 1000)


def _tiny_dit():
    """Class-conditional DiT layout (DiTTransformer2DModel, adaLN-zero, learned sigma), 1000 ImageNet classes."""
    import diffusers

    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=32)
    return diffusers.DiTPipeline(transformer=transformer, vae=_tiny_vae(),
                                 scheduler=diffusers.DDIMScheduler(), id2label=DIT_LABELS)


def _tiny_ldm_vq():
    """CompVis' LDM text-to-image layout: VQModel autoencoder (x8, the factor the pipeline assumes), LDMBert text
    encoder (bert-base-uncased WordPiece, as MiniLM's), a UNet2DConditionModel in the VQ latent space, DDIM."""
    import diffusers
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    _, tokenizer = tiny_bert()
    bert = LDMBertModel(LDMBertConfig(vocab_size=tokenizer.vocab_size, d_model=32, encoder_layers=2, encoder_ffn_dim=37,
                                      encoder_attention_heads=4, head_dim=8, max_position_embeddings=77))
    vqvae = diffusers.VQModel(block_out_channels=(32, 32, 32, 64), in_channels=3, out_channels=3, latent_channels=3,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                              num_vq_embeddings=64, vq_embed_dim=3, norm_num_groups=32, sample_size=32)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    scheduler = diffusers.DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False)
    return diffusers.LDMTextToImagePipeline(vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def _tiny_kandinsky22():
    """Kandinsky 2.2 combined layout: CLIP text/image towers and a PriorTransformer (text -> CLIP image embedding),
    an image-conditioned UNet, the MoVQ (spatially normalised VQ) decoder."""
    import diffusers
    from transformers import (CLIPImageProcessor, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    prior = diffusers.PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, image_size=32, projection_dim=32,
                                                            intermediate_size=37, num_attention_heads=4,
                                                            num_hidden_layers=2, patch_size=8))
    unet = diffusers.UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image", block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        encoder_hid_dim=32, encoder_hid_dim_type="image_proj", cross_attention_dim=32, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None)
    movq = diffusers.VQModel(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                             in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                             num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                             vq_embed_dim=4)
    return diffusers.KandinskyV22CombinedPipeline(
        unet=unet, movq=movq, scheduler=diffusers.DDIMScheduler(
            beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
            steps_offset=1),
        prior_prior=prior, prior_image_encoder=vision, prior_text_encoder=CLIPTextModelWithProjection(_text_config("gelu")),
        prior_tokenizer=clip_tokenizer("!"), prior_image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        prior_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                                  num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0))


def _flux_parts():
    """What the tiny FLUX and Chroma share, built in this order after their transformers: the 16-channel-packed VAE,
    the T5 tokenizer and encoder, the dynamically shifted flow-matching scheduler."""
    import diffusers
    from transformers import T5Config, T5EncoderModel

    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    )
    tokenizer = tiny_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    return vae, tokenizer, t5, scheduler


def _tiny_flux():
    """FLUX.1 layout (double + single stream transformer with guidance embedding, CLIP-L + T5, packed latents)."""
    import diffusers
    from transformers import CLIPTextModel

    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    vae, tokenizer_2, t5, scheduler = _flux_parts()
    return diffusers.FluxPipeline(
        transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=CLIPTextModel(_text_config("quick_gelu")),
        tokenizer=clip_tokenizer("<|endoftext|>"), text_encoder_2=t5, tokenizer_2=tokenizer_2,
    )


def _tiny_flux_kontext():
    """FLUX.1 Kontext layout: the FLUX transformer (its image tokens followed by the reference's) and encoders."""
    import diffusers

    flux = _tiny_flux()
    return diffusers.FluxKontextPipeline(**flux.components)


def _tiny_chroma():
    """Chroma layout (FLUX-like double + single stream transformer, a distilled-guidance approximator instead of the
    timestep/guidance/pooled embeddings, T5 only, packed latents)."""
    import diffusers

    transformer = diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 4, 8), approximator_num_channels=8, approximator_hidden_dim=32,
        approximator_layers=1)
    vae, tokenizer, t5, scheduler = _flux_parts()
    return diffusers.ChromaPipeline(scheduler=scheduler, vae=vae, text_encoder=t5, tokenizer=tokenizer,
                                    transformer=transformer)


def build_tiny_pipeline(family: str = "sd1", inpainting: bool = False, seed: int = 0):
    """A diffusers pipeline of `family` with tiny random weights (deterministic for a given seed)."""
    import diffusers
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    skeleton = FAMILIES[family].skeleton if family in FAMILIES else {}
    scheduler_config = dict((skeleton or FAMILIES["sd1"].skeleton)["scheduler"])
    scheduler = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    common = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=9 if inpainting else 4,
                  out_channels=4, norm_num_groups=32)
    if family in ("sd1", "sd2"):
        unet = UNet2DConditionModel(
            **common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
            use_linear_projection=family == "sd2",
        )
        act = "quick_gelu" if family == "sd1" else "gelu"
        parts = dict(unet=unet, vae=_vae(), text_encoder=CLIPTextModel(_text_config(act)),
                     tokenizer=clip_tokenizer(skeleton["tokenizer"]["pad_token"]), scheduler=scheduler)
        cls = diffusers.StableDiffusionInpaintPipeline if inpainting else diffusers.StableDiffusionPipeline
        return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family == "sdxl":
        unet = UNet2DConditionModel(
            **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=64,
        )
        cls = diffusers.StableDiffusionXLInpaintPipeline if inpainting else diffusers.StableDiffusionXLPipeline
        return cls(
            unet=unet, vae=_vae(), scheduler=scheduler,
            text_encoder=CLIPTextModel(_text_config("quick_gelu")),
            text_encoder_2=CLIPTextModelWithProjection(_text_config("gelu")),
            tokenizer=clip_tokenizer("<|endoftext|>"), tokenizer_2=clip_tokenizer("!"),
        )
    if family == "ldm":
        return _tiny_ldm(scheduler)
    if family == "sdxl-refiner":
        unet = UNet2DConditionModel(
            **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=72, cross_attention_dim=32,
        )
        return diffusers.StableDiffusionXLImg2ImgPipeline(
            unet=unet, vae=_vae(), scheduler=scheduler, text_encoder=None, tokenizer=None,
            text_encoder_2=CLIPTextModelWithProjection(_text_config("gelu")), tokenizer_2=clip_tokenizer("!"),
            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        )
    if family == "sd3":
        return _tiny_sd3()
    if family == "flux":
        return _tiny_flux()
    if family == "chroma":
        return _tiny_chroma()
    if family == "flux-kontext":
        return _tiny_flux_kontext()
    if family in tiny_flow.BUILDERS:
        return tiny_flow.build(family)
    if family in tiny_video.BUILDERS:
        return tiny_flow.build(family, tiny_video.BUILDERS)
    if family == "pixart":
        return _tiny_pixart()
    if family == "dit":
        return _tiny_dit()
    if family == "ldm-vq":
        return _tiny_ldm_vq()
    if family == "kandinsky22":
        return _tiny_kandinsky22()
    raise ValueError(f"no tiny builder for family {family!r} (choose from {', '.join(TINY_FAMILIES)})")


def build_tiny(family: str, out: Path, inpainting: bool = False, seed: int = 0) -> Path:
    """Write a tiny random model of `family` as a diffusers folder at `out`."""
    pipe = build_tiny_pipeline(family, inpainting=inpainting, seed=seed)
    pipe.save_pretrained(str(out), safe_serialization=True)
    if family == "ldm":
        (Path(out) / "sfumato.json").write_text('{"family": "ldm", "text_chunk_length": 14}')
    if family == "dit":  # save_pretrained drops id2label; the published DiT folders keep it in model_index.json
        index_path = Path(out) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["id2label"] = {str(k): v for k, v in DIT_LABELS.items()}
        index_path.write_text(json.dumps(index, indent=2))
    return out


def build_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A tiny random transformers `CLIPModel` folder (with the real CLIP tokenizer), for CLIP-score tests."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    config = CLIPConfig(text_config=_text_config("quick_gelu", 16).to_dict(), vision_config=vision.to_dict(),
                        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(str(out), safe_serialization=True)
    clip_tokenizer("<|endoftext|>").save_pretrained(str(out))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(out))
    return Path(out)


def build_tiny_motion_adapter(out: Path, seed: int = 0, single_file: bool = False, sdxl: bool = False) -> Path:
    """A tiny random AnimateDiff `MotionAdapter` that fits the tiny SD1 (or, `sdxl`, SDXL) UNet: a diffusers folder,
    or one `.safetensors` file in the original AnimateDiff layout (`single_file`)."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=2,
                            motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=not sdxl)
    for parameter in adapter.parameters():  # AnimateDiff zero-initialises proj_out: random weights show motion
        if parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=0.02)
    if not single_file:
        adapter.save_pretrained(str(out), safe_serialization=True)
        return Path(out)
    from safetensors.torch import save_file

    original = {}
    for key, value in adapter.state_dict().items():
        if "pos_embed" in key:
            continue
        key = key.replace(".attn1", ".attention_blocks.0").replace(".attn2", ".attention_blocks.1")
        key = key.replace(".norm1", ".norms.0").replace(".norm2", ".norms.1").replace(".norm3", ".ff_norm")
        key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        original[key] = value.contiguous()
    for key in [k for k in original if k.endswith("attention_blocks.0.to_q.weight")]:
        original[key.replace("to_q.weight", "pos_encoder.pe")] = torch.zeros(1, 32, original[key].shape[0])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(original, str(out))
    return Path(out)
