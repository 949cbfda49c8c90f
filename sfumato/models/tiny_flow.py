"""Tiny random-weight models of the 2025-26 transformer families, built offline in their real architectures.

Each builder returns the family's diffusers pipeline with a few-thousand-parameter transformer, a small VAE of the
family's kind and a text encoder of the family's kind (Qwen2.5-VL, Qwen3, Gemma 2, UMT5, GLM, CLIP + T5 + Llama 3)
whose tokenizer is built in memory from a byte-level vocabulary: no file comes from the network. `sfumato make-tiny
FAMILY` writes them as diffusers folders; the tests compare sfumato with the plain pipelines on them.
"""

from __future__ import annotations

WORDS = ("a an the of and with in on at red green blue yellow apple cat dog photo emoji face painting portrait house "
         "tree sky sea mountain city night day light dark").split()


def byte_vocab(prefix: str = "\u0120") -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary (GPT-2's 256 byte symbols) with merges that spell WORDS after a space."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {symbol: index for index, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        piece = prefix
        for char in word:
            if piece + char not in vocab:
                vocab[piece + char] = len(vocab)
                merges.append((piece, char))
            piece += char
    return vocab, merges


def tiny_t5_tokenizer():
    """A T5 (Unigram, SentencePiece-style) tokenizer with a small English vocabulary, built offline."""
    from transformers import T5TokenizerFast

    words = ("a an the of and with in on at red green blue yellow apple cat dog photo emoji face painting "
             "portrait house tree sky sea mountain city night day light dark").split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0 - i / 100)
                                                                for i, w in enumerate(words)]
    return T5TokenizerFast(vocab=vocab + [(",", -5.0), (".", -5.0)], extra_ids=0)


def tiny_qwen_tokenizer(chat_template: str | None = None):
    """A Qwen2 tokenizer (byte-level BPE) with Qwen's chat markers as special tokens."""
    from transformers import Qwen2Tokenizer

    vocab, merges = byte_vocab()
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_gemma_tokenizer():
    """A Gemma tokenizer (SentencePiece-style BPE over "▁" words, byte fallback) with <bos>/<eos>/<pad>."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"<0x{byte:02X}>": 5 + byte for byte in range(256)})
    merges: list[tuple[str, str]] = []
    for char in "\u2581abcdefghijklmnopqrstuvwxyz,.":
        vocab.setdefault(char, len(vocab))
    for word in WORDS:
        piece = "\u2581"
        for char in word:
            if piece + char not in vocab:
                vocab[piece + char] = len(vocab)
                merges.append((piece, char))
            piece += char
    return GemmaTokenizer(vocab=vocab, merges=merges)


def tiny_llama_tokenizer():
    """A Llama-3-style fast tokenizer (byte-level BPE) with begin/end-of-text and a pad token; like Llama 3's and
    GLM-4's it starts every text with its begin token (so even an empty prompt has one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = byte_vocab()
    for special in ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    begin = ("<|begin_of_text|>", vocab["<|begin_of_text|>"])
    core.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                        special_tokens=[begin])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   pad_token="<|pad|>")


def _kl_vae(latent_channels: int, levels: int = 2, **extra):
    """A small AutoencoderKL; `levels` 4 gives the 8x downsampling of the real ones (pipelines that assume it)."""
    import diffusers

    return diffusers.AutoencoderKL(
        block_out_channels=(32, 64) if levels == 2 else (8, 8, 16, 16), in_channels=3, out_channels=3,
        latent_channels=latent_channels, sample_size=32, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, norm_num_groups=32 if levels == 2 else 8, layers_per_block=1,
        **extra)


def tiny_qwen_image(released_vae: bool = False):
    """Qwen-Image: a MMDiT over 2x2-packed latents of Qwen's causal 3D VAE, conditioned on Qwen2.5-VL's states.
    `released_vae`: the VAE has the released block structure (four levels, two res blocks), narrow — what
    diffusers' converter of the original VAE layout expects."""
    import diffusers
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = tiny_qwen_tokenizer()
    transformer = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    vae = diffusers.AutoencoderKLQwenImage(base_dim=8 if released_vae else 24, z_dim=4,
                                           dim_mult=[1, 2, 4, 4] if released_vae else [1, 2, 4],
                                           num_res_blocks=2 if released_vae else 1,
                                           temperal_downsample=[False, True, True] if released_vae else [False, True],
                                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": len(tokenizer), "rope_theta": 1000000.0,
                     "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, vision_end_token_id=len(tokenizer) + 1,
        vision_start_token_id=len(tokenizer) + 2, vision_token_id=len(tokenizer) + 3)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, time_shift_type="exponential", shift_terminal=0.02)
    return diffusers.QwenImagePipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                                       text_encoder=text_encoder, tokenizer=tokenizer)


Z_IMAGE_CHAT = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
                "not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def tiny_z_image():
    """Z-Image (Tongyi): a single-stream DiT with refiner layers, Qwen3 text states, the FLUX 16-channel VAE."""
    import diffusers
    import torch
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = tiny_qwen_tokenizer(Z_IMAGE_CHAT)
    transformer = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    with torch.no_grad():  # created with torch.empty: give them values
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    vae = _kl_vae(16, scaling_factor=0.3611, shift_factor=0.1159)
    text_encoder = Qwen3Model(Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tokenizer),
                                          max_position_embeddings=512, head_dim=8))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    return diffusers.ZImagePipeline(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                                    tokenizer=tokenizer)


def tiny_lumina2():
    """Lumina-Image 2.0: a unified next-DiT over Gemma 2 states with a system prompt."""
    import diffusers
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = tiny_gemma_tokenizer()
    transformer = diffusers.Lumina2Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_attention_heads=2,
        num_kv_heads=2, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0,
        axes_dim_rope=[4, 2, 2], cap_feat_dim=8)
    vae = _kl_vae(4, levels=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                  scaling_factor=1.5035)
    text_encoder = Gemma2Model(Gemma2Config(head_dim=4, hidden_size=8, intermediate_size=8, num_attention_heads=2,
                                            num_hidden_layers=2, num_key_value_heads=2, sliding_window=2,
                                            vocab_size=len(tokenizer)))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=6.0)
    return diffusers.Lumina2Pipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                                     text_encoder=text_encoder, tokenizer=tokenizer)


def tiny_sana():
    """SANA: a linear-attention DiT over a 32x deep-compression autoencoder (DC-AE), Gemma 2 states, DPM-Solver
    with flow sigmas."""
    import diffusers
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = tiny_gemma_tokenizer()
    transformer = diffusers.SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=32)
    vae = diffusers.AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1], downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407)
    text_encoder = Gemma2Model(Gemma2Config(head_dim=16, hidden_size=8, intermediate_size=64,
                                            max_position_embeddings=8192, num_attention_heads=2, num_hidden_layers=1,
                                            num_key_value_heads=2, vocab_size=len(tokenizer)))
    scheduler = diffusers.DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True,
                                                      prediction_type="flow_prediction")
    return diffusers.SanaPipeline(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                                  tokenizer=tokenizer)


def tiny_auraflow():
    """AuraFlow (fal): MMDiT + single DiT blocks, UMT5 states, SDXL-style 4-channel VAE."""
    import diffusers
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    transformer = diffusers.AuraFlowTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        out_channels=4, pos_embed_max_size=256)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))
    return diffusers.AuraFlowPipeline(transformer=transformer, vae=_kl_vae(4), text_encoder=text_encoder,
                                      tokenizer=tokenizer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler())


def tiny_cogview4():
    """CogView4 (Zhipu): a DiT over GLM-4 states with linear time shifting."""
    import diffusers
    from transformers import GlmConfig, GlmModel

    tokenizer = tiny_llama_tokenizer()
    transformer = diffusers.CogView4Transformer2DModel(
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4, out_channels=4,
        text_embed_dim=32, time_embed_dim=8, condition_dim=4)
    text_encoder = GlmModel(GlmConfig(hidden_size=32, intermediate_size=8, num_hidden_layers=2, num_attention_heads=4,
                                      head_dim=8, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                          use_dynamic_shifting=True, time_shift_type="linear")
    return diffusers.CogView4Pipeline(transformer=transformer, vae=_kl_vae(4), text_encoder=text_encoder,
                                      tokenizer=tokenizer, scheduler=scheduler)


def tiny_hidream():
    """HiDream-I1: a sparse mixture-of-experts DiT over CLIP-L + CLIP-G pooled vectors, T5 and Llama 3 states."""
    import diffusers
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM, T5Config,
                              T5EncoderModel)

    from sfumato.models.singlefile import clip_tokenizer

    transformer = diffusers.HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(128, 128), llama_layers=(0, 1))
    clip = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          projection_dim=32, vocab_size=49408, max_position_embeddings=128, bos_token_id=0,
                          eos_token_id=2, pad_token_id=1)
    t5_tokenizer, llama_tokenizer = tiny_t5_tokenizer(), tiny_llama_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tokenizer), hidden_size=16, intermediate_size=37,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=4, pad_token_id=llama_tokenizer.pad_token_id))
    return diffusers.HiDreamImagePipeline(
        transformer=transformer, vae=_kl_vae(4, levels=4, scaling_factor=0.3611, shift_factor=0.1159),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(clip), tokenizer=clip_tokenizer("<|endoftext|>"),
        text_encoder_2=CLIPTextModelWithProjection(clip), tokenizer_2=clip_tokenizer("<|endoftext|>"),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer, text_encoder_4=llama, tokenizer_4=llama_tokenizer)


def tiny_bert_tokenizer():
    """A BERT WordPiece tokenizer (HunyuanDiT's Chinese-English CLIP text tower reads BERT tokens)."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", *WORDS, *"abcdefghijklmnopqrstuvwxyz",
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]]
    return BertTokenizer(vocab={token: index for index, token in enumerate(vocab)})


def tiny_hunyuandit():
    """HunyuanDiT: a DiT with skip connections over BERT (CLIP-style) and mT5 states, DDPM v-prediction."""
    import diffusers
    from transformers import BertConfig, BertModel, T5Config, T5EncoderModel

    bert_tokenizer, t5_tokenizer = tiny_bert_tokenizer(), tiny_t5_tokenizer()
    transformer = diffusers.HunyuanDiT2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
        cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16, hidden_size=24,
        activation_fn="gelu-approximate")
    bert = BertModel(BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37, max_position_embeddings=128))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.03,
                                        prediction_type="v_prediction", steps_offset=1, clip_sample=False)
    return diffusers.HunyuanDiTPipeline(transformer=transformer, vae=_kl_vae(4, levels=4), scheduler=scheduler,
                                        text_encoder=bert, tokenizer=bert_tokenizer, text_encoder_2=t5,
                                        tokenizer_2=t5_tokenizer, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)


BUILDERS = {"qwen-image": tiny_qwen_image, "z-image": tiny_z_image, "lumina2": tiny_lumina2, "sana": tiny_sana,
            "auraflow": tiny_auraflow, "cogview4": tiny_cogview4, "hidream": tiny_hidream,
            "hunyuandit": tiny_hunyuandit}


def build(family: str, builders: dict | None = None):
    """The tiny pipeline of `family` (from `builders`, default this module's), its modules in eval mode (as
    `from_pretrained` leaves them)."""
    import torch

    pipe = (builders or BUILDERS)[family]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe
