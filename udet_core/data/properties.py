"""Measurable image properties: log power spectra (generator fingerprints) and the statistics that the
synthetic explanations of udet-mini are written from."""
from __future__ import annotations

import numpy as np


def gray(a: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float luminance (..., H, W) in [0, 1] (ITU-R 601 weights)."""
    return (a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114) / 255.0


def log_spectrum(a: np.ndarray) -> np.ndarray:
    """Centred log power spectrum of the mean-removed luminance: (N, H, W, 3) uint8 -> (N, H, W)."""
    g = gray(np.asarray(a, dtype=np.float64))
    g = g - g.mean(axis=(-2, -1), keepdims=True)
    f = np.fft.fftshift(np.fft.fft2(g), axes=(-2, -1))
    return np.log(np.abs(f) ** 2 + 1e-8)


def radial_frequency(h: int, w: int) -> np.ndarray:
    """Normalised radial frequency of each bin of a centred spectrum (0 = DC, 1 = Nyquist on an axis)."""
    fy = np.fft.fftshift(np.fft.fftfreq(h)) * 2
    fx = np.fft.fftshift(np.fft.fftfreq(w)) * 2
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def high_frequency_ratio(a: np.ndarray) -> np.ndarray:
    """Share of spectral power above half the Nyquist frequency, per image."""
    p = np.exp(log_spectrum(a))
    r = radial_frequency(*p.shape[-2:])
    return (p * (r > 0.5)).sum(axis=(-2, -1)) / p.sum(axis=(-2, -1))


def periodic_peak_score(a: np.ndarray) -> np.ndarray:
    """Strongest spectral peak above its ring's median (log units), excluding the lowest frequencies.

    Periodic upsampling artefacts (checkerboards) appear as isolated peaks; natural images decay smoothly.
    """
    s = log_spectrum(a)
    r = radial_frequency(*s.shape[-2:])
    rings = np.round(r * s.shape[-1] / 2).astype(int)
    excess = np.full(s.shape, -np.inf)
    for k in np.unique(rings):
        if k < 2:
            continue
        m = rings == k
        excess[..., m] = s[..., m] - np.median(s[..., m], axis=-1, keepdims=True)
    return excess.reshape(len(s), -1).max(axis=1)
