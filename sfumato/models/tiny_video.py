"""Tiny random-weight video models in their real architectures: Wan 2.1 (text-to-video, and image-to-video with its
CLIP image encoder), LTX-Video and Stable Video Diffusion. `sfumato make-tiny wan|wan-i2v|ltx-video|svd` writes
them as diffusers folders; the tests run `sfumato animate --mode video-model` on them against the plain pipelines."""

from __future__ import annotations


def _t5():
    from transformers import UMT5Config, UMT5EncoderModel

    from sfumato.models.tiny_flow import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer()
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2,
                                          num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                          eos_token_id=1, decoder_start_token_id=0))
    return tokenizer, encoder


def _wan_parts(in_channels: int, image_dim: int | None):
    import diffusers

    vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=image_dim)
    # Wan's own sampler: UniPC on flow sigmas with the model's shift
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0)
    return vae, transformer, scheduler


def tiny_wan():
    """Wan 2.1 text-to-video: a 3D DiT over Wan's causal video VAE, UMT5 states."""
    import diffusers

    tokenizer, encoder = _t5()
    vae, transformer, scheduler = _wan_parts(16, None)
    return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=scheduler,
                                 transformer=transformer, transformer_2=None)


def tiny_wan_i2v():
    """Wan 2.1 image-to-video: the first frame's VAE latents and CLIP image features condition the 3D DiT."""
    import diffusers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer, encoder = _t5()
    vae, transformer, scheduler = _wan_parts(36, 4)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=1))
    return diffusers.WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=scheduler, transformer=transformer,
        transformer_2=None, image_encoder=image_encoder, image_processor=CLIPImageProcessor(crop_size=32, size=32))


def tiny_ltx_video():
    """LTX-Video: a DiT over LTX's 32x-compressing video VAE, T5 states; one transformer for text- and
    image-to-video."""
    import diffusers
    from transformers import T5Config, T5EncoderModel

    from sfumato.models.tiny_flow import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer()
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2,
                                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32)
    vae = diffusers.AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return diffusers.LTXPipeline(transformer=transformer, vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler())


def tiny_svd():
    """Stable Video Diffusion (image-to-video): a spatio-temporal UNet conditioned on the image's CLIP embedding
    and its VAE latents, a temporal VAE decoder, EDM Euler with Karras sigmas."""
    import diffusers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = diffusers.UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    vae = diffusers.AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                                 down_block_types=["DownEncoderBlock2D"] * 2, latent_channels=4)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(  # the pipeline feeds CLIP 224 px, as SVD's
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=28))
    return diffusers.StableVideoDiffusionPipeline(unet=unet, image_encoder=image_encoder, scheduler=scheduler, vae=vae,
                                                  feature_extractor=CLIPImageProcessor(crop_size=32, size=32))


BUILDERS = {"wan": tiny_wan, "wan-i2v": tiny_wan_i2v, "ltx-video": tiny_ltx_video, "svd": tiny_svd}
