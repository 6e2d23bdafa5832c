"""Template explanations for detection-with-explanation (UniGenDet-style answers).

SYNTHETIC: written from each family's known mechanism plus two measured properties of the image, compared
with the training real crops. They are not human annotations (FakeClue's are); the data card says so.
Every explanation starts with its verdict word ('real' or 'fake') so that answers can be parsed.
"""
from __future__ import annotations

import numpy as np

from udet_core.data.properties import high_frequency_ratio, periodic_peak_score

MECHANISM = {
    "gan": "A GAN generator that upsamples with transposed convolutions made it; such upsampling leaves a "
           "periodic checkerboard pattern.",
    "ddpm": "A pixel-space diffusion model generated it from noise; fine texture is smoothed and colours drift "
            "from those of real photographs.",
    "ldm": "A latent diffusion model decoded it from a compressed latent; the decoder's upsampling smooths fine "
           "detail and invents texture.",
    "aligned": "It is a real photograph passed through an autoencoder: the content is real, but the decoder "
               "replaced the camera's fine-grained noise with its own.",
    "sdedit": "A real photograph was partly re-noised and denoised by a diffusion model: the layout is real, "
              "local texture is synthetic.",
    "realesrgan": "A super-resolution GAN rebuilt it from a four-times smaller copy: the layout is real, the fine "
                  "detail is hallucinated by the generator's learned upsampling.",
}


def reference_stats(real_images: np.ndarray) -> dict:
    """Medians and spreads of the measured properties over real (training) crops."""
    hf, pk = high_frequency_ratio(real_images), periodic_peak_score(real_images)
    return {"hf_median": float(np.median(hf)), "hf_iqr": float(np.subtract(*np.percentile(hf, [75, 25]))),
            "peak_median": float(np.median(pk)), "peak_p95": float(np.percentile(pk, 95))}


def explain(images: np.ndarray, family: str, ref: dict) -> list[str]:
    """One explanation per image: verdict, mechanism (fakes), and the measured evidence."""
    hf, pk = high_frequency_ratio(images), periodic_peak_score(images)
    out = []
    for h, p in zip(hf, pk):
        lo, hi = ref["hf_median"] - ref["hf_iqr"], ref["hf_median"] + ref["hf_iqr"]
        level = "lower than" if h < lo else "higher than" if h > hi else "within the range of"
        evidence = (f"Its high-frequency energy ({h:.3f}) is {level} typical real crops (median "
                    f"{ref['hf_median']:.3f}), and its spectrum "
                    + ("shows a strong periodic peak" if p > ref["peak_p95"] else "has no unusual periodic peak")
                    + f" (peak score {p:.1f} vs {ref['peak_p95']:.1f} for the top 5% of real crops).")
        if family == "real":
            out.append("real. The image is consistent with a camera photograph. " + evidence)
        else:
            out.append(f"fake. {MECHANISM[family]} {evidence}")
    return out
