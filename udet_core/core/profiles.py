"""Named configurations: `tiny` (tests, seconds), `default` (2 CPU cores, ≤ 30 minutes), `full` (default with every
ablation), `paper` (GPU).

Every config is a dataclass, so a run can record exactly what it used (`asdict`) and artifacts can be
cached by a hash of the config that produced them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class DataConfig:
    """The embedded benchmark udet-mini: real crops of bundled photographs, split by source photo."""
    resolution: int = 32
    # the input size of a detector trained on other data than udet-mini (`train --data`): "published" = the size its
    # paper / official code uses (`Detector.published_size`), "profile" = `resolution` (the tiny profile: fast tests);
    # `--set data.resolution=N` overrides either
    foreign_resolution: str = "published"
    # crop side as a fraction of the photo's shorter side (multi-scale crops)
    crop_scales: tuple[float, ...] = (0.12, 0.25, 0.5, 1.0)
    n_real: dict = field(default_factory=lambda: {"train": 192, "val": 64, "test": 96})
    # photos (by group name, see udet_core.data.sources.PHOTOS) in each split; train+val are the train domain
    generator_pool: int = 2048        # train-domain crops the benchmark's own generators learn from (no zoo)
    pretrain_pool: int = 8192         # crops per photo set the zoo pretrains on (`python -m udet_core pretrain`)
    split_photos: dict = field(default_factory=lambda: {
        "train": ("astronaut", "coffee", "rocket", "immunohistochemistry", "china"),
        "val": ("chelsea", "retina"),
        "test": ("flower", "motorcycle", "hubble_deep_field", "grace_hopper"),
    })


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL stand-in (down factor 2**(len(block_out_channels)-1)); 8 latent channels at f=4 (SD: 4 at f=8)
    so that the stand-in's round trip reaches Stable Diffusion's fidelity on crops (data/zoo/vae-*/MODEL_CARD.md)."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 8
    layers_per_block: int = 1
    norm_num_groups: int = 16
    steps: int = 4000                 # pretraining (`python -m udet_core pretrain`); the tiny profile trains inline
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6


@dataclass(frozen=True)
class ImageVariationConfig:
    """Tiny Stable Diffusion Image Variation: CLIP vision encoder + image-conditioned latent UNet + DDIM."""
    unet_block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    clip_hidden_size: int = 64
    clip_layers: int = 4
    clip_heads: int = 4
    clip_patch_size: int = 4
    projection_dim: int = 64
    num_train_timesteps: int = 1000
    steps: int = 4000
    batch_size: int = 32
    lr: float = 5e-4


@dataclass(frozen=True)
class PixelDiffusionConfig:
    """Pixel-space DDPM (UNet2DModel), sampled with DDIM; also drives the SDEdit family."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    num_train_timesteps: int = 1000
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4


@dataclass(frozen=True)
class GANConfig:
    """DCGAN whose generator upsamples with transposed convolutions."""
    nz: int = 64
    ngf: int = 32
    ndf: int = 32
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-4


@dataclass(frozen=True)
class FamilyConfig:
    """Fake families: how many images per split, which are seen in training, sampling settings."""
    n_fake: dict = field(default_factory=lambda: {"train": 96, "val": 32, "test": 48})
    seen: tuple[str, ...] = ("gan", "ldm", "aligned")
    held_out: tuple[str, ...] = ("ddpm", "sdedit", "realesrgan")
    sample_steps: int = 10           # DDIM steps for ddpm / ldm sampling
    sdedit_strength: float = 0.35    # fraction of the noise schedule re-noised
    batch_size: int = 64


@dataclass(frozen=True)
class CraftConfig:
    """CRAFT (DESIGN §4): DDIM inversion, class-guided perturbation, last-k-step fine-tuning, CR loss + classifier.

    The default profile keeps the paper's k/n ratio (15/50) at n=10, k=3. Its recipe was chosen on udet-mini's
    validation split (README, "CRAFT"; issue #24): the distance by the frozen pipeline's validation AUC (MSE 0.748,
    LPIPS with a random VGG 0.632; `craft.premise_by_backbone`), the margins in units of the frozen training reals'
    median d, and one learning rate of 5e-5 for the three modules (10x the paper's 5e-6 for encoder and UNet, 5x its
    1e-5 for the decoder: the stand-in is fine-tuned for 100 steps, not to convergence), which raised the validation
    AUC of d from 0.748 to 0.826 in 100 steps while the reals' mean d rose 1.4x (at 1e-4: 0.80 in 80 steps, reals
    2x; at 2e-4: a noisy 0.72-0.84, the training subset's AUC at 0.999). The paper profile restores the paper's values.
    """
    n_steps: int = 10              # DDIM inversion and sampling steps (paper: 50)
    k: int = 3                     # last sampling steps that are fine-tuned (paper: 15)
    lam: float = 2.0               # perturbation strength lambda (eq. 4)
    tau_scale: float = 1.5         # norm bound tau = tau_scale * sqrt(latent dim) (eq. 11)
    perturb: bool = True
    loss: str = "cr"               # cr | l1 | l2 (Table 2)
    m: float = 3.0                 # CR margin (eq. 6) in units of `margin_unit` (paper: 0.4 with ImageNet LPIPS)
    delta: float = 3.0             # CR tolerance window, same unit (paper: 0.3)
    margin_unit: str = "real-median"   # real-median: x the median frozen d of the training reals | absolute (paper)
    gamma: float = 0.5             # CR penalty above m + delta
    lambda_cls: float = 1.0        # eq. 9
    distance: str = "mse"          # mse | lpips-vgg (random backbone unless ImageNet weights are cached) | vae-features
    train_encoder: bool = True
    train_unet: bool = True
    train_decoder: bool = True
    lr_encoder: float = 5e-5       # paper 5e-6
    lr_unet: float = 5e-5          # paper 5e-6
    lr_decoder: float = 5e-5       # paper 1e-5
    lr_cls: float = 5e-2           # the 2 parameters of the monotone classifier (warm-started on frozen d)
    steps: int = 100               # at most this many steps (model selection below keeps the best check)
    batch_size: int = 32           # the paper's effective batch (8 x 4 accumulation steps)
    eval_batch_size: int = 64
    eval_every: int = 20           # > 0: validation check every this many steps from step 0; keep the best
    patience: int = 3              # checks without improvement before stopping


@dataclass(frozen=True)
class AblationConfig:
    """CRAFT's ablations in notebook 04 (paper Tables 2, 5, 6) and the sweeps of the hyperparameters the paper
    never ablated. Every variant is the profile's CraftConfig with one change, fitted once per seed."""
    seeds: tuple[int, ...] = (0,)
    k_of_50: tuple[int, ...] = (5, 15, 50)           # paper Table 6 (5, 10, 15, 25, 50 on `full`), scaled to n_steps
    lams: tuple[float, ...] = (0.5, 2.0, 8.0)        # perturbation strength (eq. 4)
    margins: tuple[float, ...] = (1.5, 3.0, 6.0)     # m (eq. 6), in units of CraftConfig.margin_unit
    deltas: tuple[float, ...] = (1.5, 3.0, 6.0)      # delta (eq. 6)
    # which of them run (the default profile runs Table 2 within its 30-minute budget; `full` runs all)
    groups: tuple[str, ...] = ("table2",)


@dataclass(frozen=True)
class ClassifierConfig:
    """A small ResNet on pixels (CNNSpot-style, Wang et al. 2020) or on DIRE images: training and augmentation."""
    widths: tuple[int, ...] = (16, 32, 64)   # one BasicBlock per stage; stride 2 from the second stage on
    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    blur_prob: float = 0.5                   # CNNSpot "Blur+JPEG (0.5)"
    blur_sigma: tuple[float, float] = (0.0, 1.0)   # paper (0, 3) at 256 px; scaled to the profile's resolution
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)


@dataclass(frozen=True)
class DireConfig:
    """DIRE (Wang et al. 2023): |x - DDIM-reconstruction(DDIM-inversion(x))|, then a ResNet classifier."""
    n_steps: int = 10                        # official: 20 inversion + 20 reconstruction steps
    batch_size: int = 64
    classifier: ClassifierConfig = ClassifierConfig(blur_prob=0.0, jpeg_prob=0.0)   # official DIRE: no augmentation


@dataclass(frozen=True)
class AerobladeConfig:
    """AEROBLADE (Ricker et al. 2024): training-free, min over autoencoders of an LPIPS layer distance."""
    layer: int = 2                           # official: the 2nd VGG layer's LPIPS distance ("lpips_vgg_2")
    extra_autoencoders: tuple[str, ...] = ()  # AutoencoderKL folders besides the benchmark's own VAE
    batch_size: int = 64


@dataclass(frozen=True)
class UnifiedConfig:
    """UniGenDet's model (BAGEL-style Mixture-of-Transformers): Qwen2-style LLM blocks with an understanding and a
    generation expert, a SigLIP vision encoder, and VAE-latent tokens (the benchmark's AutoencoderKL)."""
    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    vocab_size: int | None = None     # None: the size of the tokenizer built on the benchmark's text
    vit_hidden_size: int = 64
    vit_layers: int = 2
    vit_heads: int = 4
    vit_intermediate_size: int = 256
    vit_patch_size: int = 8
    vit_image_size: int | None = None  # None: the benchmark's resolution
    latent_channels: int = 4           # must match the VAE (FLUX: 16)
    latent_patch_size: int = 2         # BAGEL patchifies VAE latents 2x2
    latent_grid: int | None = None     # latent side (None: from the VAE and the resolution)


# The paper's model (BAGEL-7B-MoT): Qwen2.5-7B-sized blocks x 2 experts, SigLIP so400m (27 layers, 1152), FLUX VAE
# latents (16 channels). Only ever instantiated on the meta device (parameter count); see models/unified.py.
BAGEL_7B_MOT = UnifiedConfig(hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944,
                             rope_theta=1e6, vocab_size=152064, vit_hidden_size=1152, vit_layers=27, vit_heads=16,
                             vit_intermediate_size=4304, vit_patch_size=14, vit_image_size=384, latent_channels=16,
                             latent_patch_size=2, latent_grid=64)


@dataclass(frozen=True)
class GdufConfig:
    """UniGenDet stage 1 (GDUF): detection with explanation + captioned generation, one model, eq. 9.

    Recipe, measured on the validation split (default profile, seed 0, from the zoo's pretrained unified model,
    model selection from step 0; issue #27; measured before batches held the classes in exact proportion, fd08c8d):
    lr 1e-3 constant for 150 steps, 50x the official 2e-5 (which warms up over 2,000 steps). Lower rates with a
    50-step warmup and the fresh head at 1e-3 (1e-4, 3e-4, and the official 2e-5; 600 steps) never beat step 0 on
    validation; 600 steps at 1e-3 fit the training subset (head AUC 0.91) while validation stayed at 0.51-0.64. The
    linear probes of notebook 01 say why: the pretrained representation carries no real/fake signal that generalises
    (answer-token state: train 0.81, val 0.41, test 0.54)."""
    model: UnifiedConfig = UnifiedConfig()
    smsa: bool = True                 # False: the "w/o SMSA" ablation (text and ViT tokens do not see VAE latents)
    gen_ratio: float = 1.0            # generation samples per detection sample: paper §4.1 1:1 (official config 1:5,
                                      # i.e. 0.2); 0 = w/o generation
    w_cls: float = 1.0                # eq. 9 weights (paper: all 1; the official code weighs the head 0.2)
    w_exp: float = 1.0
    w_gen: float = 1.0
    steps: int = 150
    batch_size: int = 16              # detection + generation samples per step
    lr: float = 1e-3
    lr_head: float | None = None      # the detection head's rate (fresh, re-initialised per seed); None: `lr`
    warmup_steps: int = 0             # linear warmup of both rates (official: 2,000 of 2e-5)
    weight_decay: float = 0.0
    eval_every: int = 25              # model selection on the validation head AUC from step 0 (0: none)
    max_unparsed: float = 0.1         # ... among checks whose validation answers start with a verdict word at least
                                      # 1 - max_unparsed of the time (a UniGenDet that cannot answer is no candidate)
    patience: int = 1000              # checks without improvement before stopping (large: select, never stop)
    max_answer_tokens: int = 96       # <answer> + explanation + end-of-text, truncated beyond
    vocab_size: int = 1024            # byte-level BPE trained on the training rows' text (at most)
    gen_steps: int = 20               # Euler steps of the flow ODE when generating (paper: 50)
    eval_batch_size: int = 64
    # pretraining of the unified model (`python -m udet_core pretrain --only unified`; BAGEL's role): captioning
    # (understanding) + flow matching on captioned crops of every photo (generation), 1:1
    pretrain_steps: int = 4000
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3


@dataclass(frozen=True)
class DigaConfig:
    """UniGenDet stage 2 (DIGA, eq. 10-11): align the generator's layer-l states on noisy latents with the frozen
    GDUF detector's features of the clean real image, through a trainable projector."""
    lam: float = 0.5                  # eq. 11 weight (official default 0.5)
    student_layer: int = 2            # generator layer l (paper: 8 of 28)
    teacher_layer: int | None = None  # detector layer of the targets (None: the last block, as the paper; official code: 8)
    projector_mult: int = 4           # official projector Linear(H, 4H) - GELU - Linear(4H, H)
    gen_ratio: float = 1.0            # generation rows per detection row (detection rows: real/fake balanced, eq. 6-7)
    steps: int = 100
    batch_size: int = 32
    lr: float = 3e-4


@dataclass(frozen=True)
class GenEvalConfig:
    """Generation metrics (paper Table 4 / D): FID-style distance, intra-prompt diversity, detector-judged realism."""
    n_samples: int = 128              # generated images per model for the FID-style distance
    n_prompts: int = 4                # prompts for the diversity measure
    per_prompt: int = 8               # samples per prompt (paper Table D: 16)
    judges: tuple[str, ...] = ("cnnspot", "aeroblade")   # frozen detectors that judge realism
    seeds: tuple[int, ...] | None = None   # the DIGA experiment's seeds (None: the profile's eval seeds)
    featnet_steps: int = 1000         # training steps of the substitute feature network (when Inception is absent)
    feature_dim: int = 32             # its feature size, below n_samples (full-rank covariances; Inception: 2048)


@dataclass(frozen=True)
class EvalConfig:
    """The common protocol: detectors, seeds, robustness grid, format-bias check, cross-domain matrix."""
    detectors: tuple[str, ...] = ("craft", "dire", "aeroblade", "cnnspot", "unigendet")
    # 2 domains x seeds fits each; DIRE (the slowest of these to fit) only on the paper profile, for the 20-min budget
    cross_domain_detectors: tuple[str, ...] = ("craft", "aeroblade", "cnnspot")
    seeds: tuple[int, ...] = (0,)            # 2 on `full`, 5 on `paper`
    jpeg_qualities: tuple = (None, 75, 50)
    crop_ratios: tuple[float, ...] = (1.0, 0.75, 0.5)
    blur_sigmas: tuple[float, ...] = (1.0,)
    robustness_per_class: int = 24          # test images per class in the robustness sweep
    format_jpeg_quality: int = 95


@dataclass(frozen=True)
class UpsamplerAblationConfig:
    """Notebook 05's decoder-upsampler ablation (paper §4.3): the copy of the VAE whose decoder upsamples with
    transposed convolutions is trained on real crops (encoder frozen) before CRAFT fine-tunes it."""
    steps: int = 150                  # decoder training steps (the benchmark's VAE: VAEConfig.steps)
    batch_size: int = 32
    lr: float = 1e-3


@dataclass(frozen=True)
class Profile:
    name: str = "default"
    seed: int = 0
    # Start from the pretrained zoo (data/zoo, `python -m udet_core pretrain`) instead of training every generator
    # and backbone inside the run; the tiny (tests) and paper (GPU) profiles train their own.
    zoo: bool = True
    # The detectors' SD Image Variation backbone: the zoo's stand-in pretrained on crops of the train-split photos
    # ("train") or of every photo ("all": Stable Diffusion's pretraining covered the reals the paper tests on).
    backbone: str = "all"
    data: DataConfig = DataConfig()
    vae: VAEConfig = VAEConfig()
    sdiv: ImageVariationConfig = ImageVariationConfig()
    pixel: PixelDiffusionConfig = PixelDiffusionConfig()
    gan: GANConfig = GANConfig()
    families: FamilyConfig = FamilyConfig()
    craft: CraftConfig = CraftConfig()
    ablation: AblationConfig = AblationConfig()
    cnnspot: ClassifierConfig = ClassifierConfig()
    dire: DireConfig = DireConfig()
    aeroblade: AerobladeConfig = AerobladeConfig()
    gduf: GdufConfig = GdufConfig()
    diga: DigaConfig = DigaConfig()
    geneval: GenEvalConfig = GenEvalConfig()
    eval: EvalConfig = EvalConfig()
    upsampler: UpsamplerAblationConfig = UpsamplerAblationConfig()


def _tiny() -> Profile:
    return Profile(
        name="tiny", zoo=False,
        data=DataConfig(resolution=16, foreign_resolution="profile", n_real={"train": 32, "val": 16, "test": 16},
                        generator_pool=64, pretrain_pool=256),
        vae=VAEConfig(block_out_channels=(8, 16), norm_num_groups=8, steps=4, batch_size=8),
        sdiv=ImageVariationConfig(unet_block_out_channels=(16, 32), attention_head_dim=4, clip_hidden_size=16,
                                  clip_layers=1, clip_heads=2, projection_dim=16, num_train_timesteps=100,
                                  steps=4, batch_size=8),
        pixel=PixelDiffusionConfig(block_out_channels=(8, 16), norm_num_groups=8, num_train_timesteps=100,
                                   steps=4, batch_size=8),
        gan=GANConfig(nz=8, ngf=8, ndf=8, steps=4, batch_size=8),
        families=FamilyConfig(n_fake={"train": 8, "val": 4, "test": 8}, sample_steps=3, batch_size=16),
        craft=CraftConfig(n_steps=5, k=2, steps=4, batch_size=4, eval_batch_size=16, distance="mse"),
        cnnspot=ClassifierConfig(widths=(4, 8), steps=4, batch_size=8),
        dire=DireConfig(n_steps=3, classifier=ClassifierConfig(widths=(4, 8), steps=4, batch_size=8, blur_prob=0.0,
                                                                jpeg_prob=0.0)),
        gduf=GdufConfig(model=UnifiedConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                            intermediate_size=64, vit_hidden_size=16, vit_layers=1, vit_heads=2,
                                            vit_intermediate_size=32, vit_patch_size=8),
                        steps=4, batch_size=8, gen_steps=3, eval_batch_size=16, max_answer_tokens=24),
        diga=DigaConfig(student_layer=1, steps=4, batch_size=8),
        geneval=GenEvalConfig(n_samples=16, n_prompts=2, per_prompt=4, featnet_steps=4, feature_dim=8),
        eval=EvalConfig(seeds=(0, 1), jpeg_qualities=(None, 50), crop_ratios=(1.0, 0.5), blur_sigmas=(1.0,),
                        robustness_per_class=4),
        ablation=AblationConfig(seeds=(0, 1), k_of_50=(15, 50), lams=(2.0,), margins=(3.0,), deltas=(3.0,),
                                groups=("table2", "table5", "table6", "lambda", "margin", "delta")),
        upsampler=UpsamplerAblationConfig(steps=4, batch_size=8),
    )


def _paper() -> Profile:
    """GPU scale: higher resolution, wider models, far longer training (hours on one GPU)."""
    return Profile(
        name="paper", zoo=False,
        data=DataConfig(resolution=128, n_real={"train": 8000, "val": 1000, "test": 2000}),
        vae=VAEConfig(block_out_channels=(64, 128, 256, 256), latent_channels=4, steps=20000, batch_size=64),
        sdiv=ImageVariationConfig(unet_block_out_channels=(128, 256, 512), layers_per_block=2, clip_hidden_size=256,
                                  clip_layers=8, clip_heads=8, clip_patch_size=8, projection_dim=256,
                                  steps=40000, batch_size=64, lr=1e-4),
        pixel=PixelDiffusionConfig(block_out_channels=(64, 128, 256, 256), layers_per_block=2, steps=40000,
                                   batch_size=64, lr=2e-4),
        gan=GANConfig(nz=128, ngf=64, ndf=64, steps=30000),
        families=FamilyConfig(n_fake={"train": 4000, "val": 500, "test": 1000}, sample_steps=50),
        craft=CraftConfig(n_steps=50, k=15, m=0.4, delta=0.3, margin_unit="absolute", lr_encoder=5e-6, lr_unet=5e-6, lr_decoder=1e-5,
                          lr_cls=1e-3, steps=20000, batch_size=32, eval_every=500, patience=5),
        cnnspot=ClassifierConfig(widths=(64, 128, 256, 512), steps=20000, blur_sigma=(0.0, 1.5)),
        dire=DireConfig(n_steps=20, classifier=ClassifierConfig(widths=(64, 128, 256, 512), steps=20000, blur_prob=0.0,
                                                    jpeg_prob=0.0)),
        gduf=GdufConfig(model=UnifiedConfig(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2,
                                            intermediate_size=1536, vit_hidden_size=384, vit_layers=6, vit_heads=6,
                                            vit_intermediate_size=1536, vit_patch_size=16),
                        steps=20000, batch_size=64, lr=3e-4, gen_steps=50),
        diga=DigaConfig(student_layer=4, steps=10000, batch_size=64, lr=1e-4),
        geneval=GenEvalConfig(n_samples=5000, n_prompts=32, per_prompt=16, featnet_steps=5000),
        eval=EvalConfig(seeds=(0, 1, 2, 3, 4), jpeg_qualities=(None, 90, 70, 50), crop_ratios=(1.0, 0.9, 0.7, 0.5),
                        blur_sigmas=(0.5, 1.0, 2.0), robustness_per_class=500,
                        cross_domain_detectors=("craft", "dire", "aeroblade", "cnnspot")),
        ablation=AblationConfig(seeds=(0, 1, 2), k_of_50=(5, 10, 15, 25, 50), margins=(0.2, 0.4, 0.8),
                                deltas=(0.15, 0.3, 0.6),
                                groups=("table2", "table5", "table6", "lambda", "margin", "delta")),
    )


def _full() -> Profile:
    """The default world with every ablation group and 3 ablation seeds (beyond the default's 30-minute budget), the
    transposed-conv decoder of the upsampler ablation trained 1000 steps instead of 150 (to start nearer the
    pretrained decoder's round trip), and the DIGA experiment with 5 seeds per arm on 1,024 generated samples."""
    return Profile(name="full", eval=replace(EvalConfig(), seeds=(0, 1)),
                   ablation=replace(AblationConfig(), seeds=(0, 1, 2), k_of_50=(5, 10, 15, 25, 50),
                                    groups=("table2", "table5", "table6", "lambda", "margin", "delta")),
                   upsampler=replace(UpsamplerAblationConfig(), steps=1000),
                   geneval=replace(GenEvalConfig(), n_samples=1024, seeds=(0, 1, 2, 3, 4)))


PROFILES = {"tiny": _tiny, "default": Profile, "full": _full, "paper": _paper}


def get_profile(name: str = "default", **overrides) -> Profile:
    """Return the named profile, with top-level fields replaced by `overrides` (e.g. seed=1)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return replace(PROFILES[name](), **overrides)


def config_dict(cfg) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def config_hash(*cfgs) -> str:
    """Short stable hash of one or more configs: the cache key of the artifacts they produce."""
    blob = json.dumps([config_dict(c) if dataclasses.is_dataclass(c) else c for c in cfgs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def from_config_dict(cls, d: dict):
    """The config dataclass `cls` rebuilt from its `config_dict` (lists back to tuples), e.g. the profile a checkpoint
    recorded; keys the dataclass does not have are an error (a checkpoint from another code version)."""
    import typing
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")

    def value(v, t):
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            return from_config_dict(t, v)
        if isinstance(v, list):
            return tuple(value(x, None) for x in v)
        if isinstance(v, dict):
            return {k: value(x, None) for k, x in v.items()}
        return v
    return cls(**{k: value(v, hints[k]) for k, v in d.items()})


def with_settings(p: Profile, settings) -> Profile:
    """`p` with dotted settings replaced, e.g. ["data.resolution=256", "craft.steps=1", "craft.lr_unet=5e-6"]
    (values are Python literals; lists become tuples); an unknown name is an error listing the known ones."""
    import ast
    for item in settings or ():
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"setting {item!r} is not NAME=VALUE (e.g. craft.steps=100)")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text                       # a bare word: a string (e.g. craft.distance=mse)
        value = tuple(value) if isinstance(value, list) else value
        path = name.split(".")
        p = _replace_path(p, path, value, name)
    return p


def _replace_path(cfg, path: list, value, name: str):
    fields = {f.name for f in dataclasses.fields(cfg)}
    if path[0] not in fields:
        raise ValueError(f"unknown setting {name!r}: {type(cfg).__name__} has {sorted(fields)}")
    if len(path) == 1:
        old = getattr(cfg, path[0])
        ok = (old is None or value is None or isinstance(value, type(old))
              or (isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool)))
        if not ok or (isinstance(old, (int, float)) and isinstance(value, bool) != isinstance(old, bool)):
            raise ValueError(f"setting {name}={value!r}: expected a {type(old).__name__} like its current value "
                             f"{old!r}")
        return replace(cfg, **{path[0]: value})
    return replace(cfg, **{path[0]: _replace_path(getattr(cfg, path[0]), path[1:], value, name)})
