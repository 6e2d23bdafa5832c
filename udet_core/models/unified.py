"""UniGenDet's unified model: a BAGEL-style Mixture-of-Transformers over one packed sequence (DESIGN §4, paper §3.2).

Three kinds of token share every attention layer:
  VAE latents (2x2-patchified AutoencoderKL latents)   generation tokens     -> the generation expert
  SigLIP ViT features, text                            understanding tokens  -> the understanding expert
Each expert has its own Qwen2-style projections, RMSNorms and SwiGLU MLP; attention is joint over the sequence and
shaped by the SMSA block masks of paper App. B (`smsa_mask`). Sizes come from `UnifiedConfig`; the paper's model
(`profiles.BAGEL_7B_MOT`) is built by the same class on the meta device to count its parameters.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from udet_core.core.profiles import BAGEL_7B_MOT, UnifiedConfig

IMAGE, TEXT = "image", "text"
PAD, EOS, ANSWER = "<|pad|>", "<|endoftext|>", "<|answer|>"
INSTRUCTION = "Does the image look real or fake?"
CAPTION_INSTRUCTION = "Describe the image."   # the understanding task of pretraining (captioning)


# ------------------------------------------------------------------ tokenizer

def build_tokenizer(texts, vocab_size: int):
    """A byte-level BPE (Qwen2's scheme: bytes, digits split one by one) trained on the given text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, ANSWER], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)


# ------------------------------------------------------------------ SMSA masks (paper App. B)

def smsa_mask(splits: list[tuple[str, int]]) -> torch.Tensor:
    """Block mask (True = may attend) of one sample: every split sees all earlier splits; text splits are causal
    within themselves, image splits bidirectional (UniGenDet App. B, as BAGEL's packed block masks)."""
    sid = torch.repeat_interleave(torch.arange(len(splits)), torch.tensor([n for _, n in splits]))
    image = torch.tensor([kind == IMAGE for kind, _ in splits])[sid]
    pos = torch.arange(len(sid))
    same = sid[:, None] == sid[None, :]
    return (sid[None, :] < sid[:, None]) | (same & (image[:, None] | (pos[None, :] <= pos[:, None])))


def detection_splits(n_vae: int, n_vit: int, n_instruction: int, n_answer: int) -> list[tuple[str, int]]:
    """A detection sample: clean VAE latents | ViT features | instruction | answer."""
    return [(IMAGE, n_vae), (IMAGE, n_vit), (TEXT, n_instruction), (TEXT, n_answer)]


def detection_mask(n_vae: int, n_vit: int, n_instruction: int, n_answer: int, smsa: bool = True) -> torch.Tensor:
    """SMSA for detection: ViT and text tokens see the VAE latents, which see only themselves. Without SMSA
    (paper Table 6, 'w/o SMSA') nothing after the VAE latents sees them."""
    m = smsa_mask(detection_splits(n_vae, n_vit, n_instruction, n_answer))
    if not smsa:
        m[n_vae:, :n_vae] = False
    return m


def generation_splits(n_caption: int, n_latent: int) -> list[tuple[str, int]]:
    """A generation sample: caption | noisy VAE latents."""
    return [(TEXT, n_caption), (IMAGE, n_latent)]


def generation_mask(n_caption: int, n_latent: int) -> torch.Tensor:
    """Generation: a causal caption, then bidirectional noisy latents that see the whole caption."""
    return smsa_mask(generation_splits(n_caption, n_latent))


def rope_positions(splits: list[tuple[str, int]]) -> torch.Tensor:
    """Rotary positions as BAGEL assigns them: text tokens count up, all tokens of an image split share one."""
    pos, p = [], 0
    for kind, n in splits:
        pos += [p] * n if kind == IMAGE else list(range(p, p + n))
        p += 1 if kind == IMAGE else n
    return torch.tensor(pos)


def batch_mask(block: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, T) mask: the sample's block mask, padding keys hidden; every token may at least see itself."""
    eye = torch.eye(block.shape[0], dtype=torch.bool, device=valid.device)
    return (block.to(valid.device)[None] & valid[:, None, :]) | eye


# ------------------------------------------------------------------ Mixture-of-Transformers blocks

def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/p * w/p, C*p*p) tokens, row-major."""
    B, C, h, w = z.shape
    return z.reshape(B, C, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // p) * (w // p), C * p * p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, side: int) -> torch.Tensor:
    """Inverse of `patchify` for a square latent of `side` x `side`."""
    B, g = tokens.shape[0], side // p
    return tokens.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, channels, side, side)


def routed(x: torch.Tensor, is_gen: torch.Tensor, und: nn.Module, gen: nn.Module) -> torch.Tensor:
    """Mixture-of-Transformers routing: understanding tokens through `und`, generation tokens through `gen`."""
    a, b = und(x[~is_gen]), gen(x[is_gen])
    out = x.new_empty(*x.shape[:-1], a.shape[-1])
    out[~is_gen], out[is_gen] = a, b
    return out


class Expert(nn.Module):
    """One Qwen2 decoder layer's weights for one kind of token: q/k/v (with bias), o, two RMSNorms, SwiGLU MLP."""

    def __init__(self, c):
        super().__init__()
        from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm
        H, hd = c.hidden_size, c.hidden_size // c.num_attention_heads
        self.input_norm = Qwen2RMSNorm(H, eps=c.rms_norm_eps)
        self.q_proj = nn.Linear(H, c.num_attention_heads * hd, bias=True)
        self.k_proj = nn.Linear(H, c.num_key_value_heads * hd, bias=True)
        self.v_proj = nn.Linear(H, c.num_key_value_heads * hd, bias=True)
        self.o_proj = nn.Linear(c.num_attention_heads * hd, H, bias=False)
        self.post_norm = Qwen2RMSNorm(H, eps=c.rms_norm_eps)
        self.mlp = Qwen2MLP(c)


class MoTLayer(nn.Module):
    """Joint attention over all tokens (eq. 2-4), with each token's projections and MLP from its own expert."""

    def __init__(self, c):
        super().__init__()
        self.und, self.gen = Expert(c), Expert(c)
        self.n_heads, self.head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads

    def forward(self, h, is_gen, mask, cos, sin, cache: dict | None = None):
        """`mask` (B, T, T_past + T); with `cache`, keys and values of earlier calls are reused and extended."""
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb
        B, T, _ = h.shape
        u, g = self.und, self.gen
        x = routed(h, is_gen, u.input_norm, g.input_norm)
        q, k, v = (routed(x, is_gen, getattr(u, n), getattr(g, n)).view(B, T, -1, self.head_dim).transpose(1, 2)
                   for n in ("q_proj", "k_proj", "v_proj"))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
        h = h + routed(a.transpose(1, 2).reshape(B, T, -1), is_gen, u.o_proj, g.o_proj)
        return h + routed(routed(h, is_gen, u.post_norm, g.post_norm), is_gen, u.mlp, g.mlp)


def qwen2_config(cfg: UnifiedConfig):
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_kv_heads, rms_norm_eps=cfg.rms_norm_eps, hidden_act="silu",
                       rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                       tie_word_embeddings=False)


def siglip_config(cfg: UnifiedConfig):
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(hidden_size=cfg.vit_hidden_size, intermediate_size=cfg.vit_intermediate_size,
                              num_hidden_layers=cfg.vit_layers, num_attention_heads=cfg.vit_heads,
                              image_size=cfg.vit_image_size, patch_size=cfg.vit_patch_size, vision_use_head=False)


def resolve(cfg: UnifiedConfig, vocab_size: int, resolution: int, vae) -> UnifiedConfig:
    """Fill the sizes a config leaves to the data: vocabulary, ViT input size, latent channels and grid."""
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    return replace(cfg, vocab_size=cfg.vocab_size or vocab_size, vit_image_size=cfg.vit_image_size or resolution,
                   latent_channels=vae.config.latent_channels, latent_grid=cfg.latent_grid or resolution // down)


class UnifiedModel(nn.Module):
    """Text embedding + SigLIP + VAE-latent projections around a stack of MoT layers, with three heads:
    the LM head (explanations), the detection head (official: LayerNorm-Linear(H, H/4)-ReLU-Linear(H/4, 2)) and the
    velocity head (llm2vae) for flow matching."""

    def __init__(self, cfg: UnifiedConfig):
        super().__init__()
        missing = [k for k in ("vocab_size", "vit_image_size", "latent_grid") if getattr(cfg, k) is None]
        if missing:
            raise ValueError(f"UnifiedConfig needs {missing}; build it with models.unified.resolve()")
        from diffusers.models.embeddings import (
            TimestepEmbedding,
            Timesteps,
            get_2d_sincos_pos_embed,
        )
        from transformers import SiglipVisionModel
        from transformers.models.qwen2.modeling_qwen2 import (
            Qwen2RMSNorm,
            Qwen2RotaryEmbedding,
        )
        self.cfg = cfg
        c, H = qwen2_config(cfg), cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, H)
        self.layers = nn.ModuleList(MoTLayer(c) for _ in range(cfg.num_layers))
        self.norm, self.norm_gen = Qwen2RMSNorm(H, eps=cfg.rms_norm_eps), Qwen2RMSNorm(H, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(H, cfg.vocab_size, bias=False)
        self.rotary = Qwen2RotaryEmbedding(c)
        self.vit = SiglipVisionModel(siglip_config(cfg))
        self.connector = nn.Sequential(nn.Linear(cfg.vit_hidden_size, H), nn.GELU(approximate="tanh"), nn.Linear(H, H))
        d_latent = cfg.latent_channels * cfg.latent_patch_size ** 2
        self.vae2llm, self.llm2vae = nn.Linear(d_latent, H), nn.Linear(H, d_latent)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(256, H)
        grid = cfg.latent_grid // cfg.latent_patch_size
        self.register_buffer("latent_pos", get_2d_sincos_pos_embed(H, grid, output_type="pt").float(),
                             persistent=False)
        self.det_head = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, H // 4), nn.ReLU(), nn.Linear(H // 4, 2))

    def image_token_counts(self) -> tuple[int, int]:
        """(VAE-latent tokens, ViT tokens) of one image."""
        c = self.cfg
        return (c.latent_grid // c.latent_patch_size) ** 2, (c.vit_image_size // c.vit_patch_size) ** 2

    # -- token embeddings
    def latent_tokens(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """VAE latents at flow time t (0 = clean) -> tokens: patch projection + 2-D sin-cos position + time."""
        x = self.vae2llm(patchify(z, self.cfg.latent_patch_size))
        G = self.cfg.latent_grid // self.cfg.latent_patch_size
        g = z.shape[-1] // self.cfg.latent_patch_size
        pos = self.latent_pos.view(G, G, -1)[:g, :g].reshape(g * g, -1)
        return x + pos + self.time_embedder(self.time_proj(t * 1000).to(x.dtype))[:, None]

    def vit_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels (SigLIP's normalisation) -> SigLIP patch features -> the connector MLP."""
        return self.connector(self.vit(pixel_values=x).last_hidden_state)

    # -- the transformer
    def forward(self, detection: dict | None = None, generation: dict | None = None) -> dict:
        """The one call per training step (DistributedDataParallel allows one forward before each backward): the
        detection samples' and the generation samples' outputs, from `detection(**detection)` and
        `generation(**generation)`; a task without samples is None."""
        return {"detection": None if detection is None else self.detection(**detection),
                "generation": None if generation is None else self.generation(**generation)}

    def transformer(self, embeds, is_gen, mask, positions, hidden_layers: tuple[int, ...] = (), cache: list | None = None):
        """Run the MoT stack. Returns the final normed states (each expert's own final norm) and, for each index
        in `hidden_layers`, the states after that many layers. `cache` (one dict per layer) keeps keys/values."""
        cos, sin = self.rotary(embeds, positions)
        h, hidden = embeds, {}
        for i, layer in enumerate(self.layers):
            h = layer(h, is_gen, mask, cos, sin, None if cache is None else cache[i])
            if i + 1 in hidden_layers:
                hidden[i + 1] = h
        return routed(h, is_gen, self.norm, self.norm_gen), hidden

    def detection(self, z, x, instruction, answer, answer_valid, smsa: bool = True, hidden_layers=(),
                  cache: list | None = None) -> dict:
        """Detection sequence (clean latents | ViT | instruction | answer). Returns the detection head's logits at
        the first answer token (`cls_logits`), the LM logits from there on (`lm_logits`: position i predicts answer
        token i+1), the final `states`, the `hidden` states asked for and the rotary `positions`. With `cache` (a
        list of empty dicts) the keys/values are kept for `decode_step`."""
        B = z.shape[0]
        vae, vit = self.latent_tokens(z, torch.zeros(B, device=z.device)), self.vit_tokens(x)
        txt = self.embed_tokens(torch.cat([instruction, answer], 1))
        splits = detection_splits(vae.shape[1], vit.shape[1], instruction.shape[1], answer.shape[1])
        ones = torch.ones(B, vae.shape[1] + vit.shape[1] + instruction.shape[1], dtype=torch.bool, device=z.device)
        mask = batch_mask(detection_mask(*(n for _, n in splits), smsa=smsa), torch.cat([ones, answer_valid], 1))
        is_gen = torch.zeros(B, mask.shape[-1], dtype=torch.bool, device=z.device)
        is_gen[:, :vae.shape[1]] = True
        pos = rope_positions(splits).to(z.device).expand(B, -1)
        h, hidden = self.transformer(torch.cat([vae, vit, txt], 1), is_gen, mask, pos, hidden_layers, cache)
        i0 = vae.shape[1] + vit.shape[1] + instruction.shape[1]
        return {"cls_logits": self.det_head(h[:, i0]), "lm_logits": self.lm_head(h[:, i0:]), "states": h,
                "hidden": hidden, "positions": pos, "visible": mask[:, -1]}

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: list,
                    visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One more answer token per sample (understanding expert). `visible` (B, T_past): the cached keys the
        previous answer token saw (the detection output's `visible`); the new token sees those and itself, so the
        SMSA mask (and its w/o-SMSA variant, which hides the VAE latents) holds while decoding.
        Returns (the LM logits for the token after it (B, vocab), the new token's `visible` (B, T_past + 1))."""
        visible = torch.cat([visible, torch.ones_like(visible[:, :1])], 1)        # (B, T_past + 1)
        is_gen = torch.zeros(len(tokens), 1, dtype=torch.bool, device=tokens.device)
        h, _ = self.transformer(self.embed_tokens(tokens[:, None]), is_gen, visible[:, None], positions[:, None],
                                cache=cache)                                     # (B, 1, H)
        return self.lm_head(h[:, -1]), visible

    def generation(self, caption, caption_valid, z_t, t, hidden_layers=()) -> dict:
        """Generation sequence (left-padded caption | noisy latents). Returns the predicted `velocity` and the
        `hidden` states asked for."""
        B = z_t.shape[0]
        lat = self.latent_tokens(z_t, t)
        splits = generation_splits(caption.shape[1], lat.shape[1])
        valid = torch.cat([caption_valid, torch.ones(B, lat.shape[1], dtype=torch.bool, device=z_t.device)], 1)
        mask = batch_mask(generation_mask(caption.shape[1], lat.shape[1]), valid)
        is_gen = torch.zeros_like(valid)
        is_gen[:, caption.shape[1]:] = True
        pos = rope_positions(splits).to(z_t.device).expand(B, -1)
        h, hidden = self.transformer(torch.cat([self.embed_tokens(caption), lat], 1), is_gen, mask, pos, hidden_layers)
        v = unpatchify(self.llm2vae(h[:, caption.shape[1]:]), self.cfg.latent_patch_size, self.cfg.latent_channels,
                       z_t.shape[-1])
        return {"velocity": v, "hidden": hidden}


def count_parameters(module: nn.Module) -> dict:
    """Parameter counts by top-level component (works on the meta device)."""
    out = {}
    for name, child in module.named_children():
        out[name] = sum(p.numel() for p in child.parameters())
    out["total"] = sum(p.numel() for p in module.parameters())
    return out


def paper_model_parameters(cfg: UnifiedConfig | None = None, with_vae: bool = True) -> dict:
    """Build the paper's model (BAGEL-7B-MoT sizes) on the meta device and count its parameters by component;
    with `with_vae`, also the FLUX-sized AutoencoderKL (16 latent channels) that encodes its latents."""
    from accelerate import init_empty_weights

    cfg = cfg or BAGEL_7B_MOT
    with init_empty_weights():
        counts = count_parameters(UnifiedModel(cfg))
        if with_vae:
            from diffusers import AutoencoderKL
            vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                                layers_per_block=2, latent_channels=cfg.latent_channels, use_quant_conv=False,
                                use_post_quant_conv=False)
            counts["vae (FLUX-sized AutoencoderKL)"] = sum(p.numel() for p in vae.parameters())
    return counts
