"""Figure layout of `udet_core.viz` on synthetic arrays (Agg backend): aligned rows, titles next to what they
title and overlapping nothing, readable text, and the notebook 05 explorer driven by a stub model."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from udet_core.study import viz

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(n, size=16):
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _extent(artist, fig):
    """An artist's drawn box in figure coordinates (0..1)."""
    return artist.get_window_extent(fig.canvas.get_renderer()).transformed(fig.transFigure.inverted())


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_visible() and ax.axison]


@pytest.mark.parametrize("n_groups", [4, 7, 11])
def test_spectra_rows_are_aligned_and_readable(n_groups):
    keys = ["real"] + [f"family {i}\nfake" for i in range(n_groups - 1)]
    spectra = {k: RNG.normal(size=(16, 16)) for k in keys}
    fig = viz.spectra_figure(spectra, title="spectra")
    fig.canvas.draw()
    boxes = [ax.get_position() for ax in _image_axes(fig)
             if ax.images[0].get_cmap().name in ("viridis", "RdBu_r")]
    assert len(boxes) == 2 * n_groups
    widths = np.array([b.width for b in boxes])
    heights = np.array([b.height for b in boxes])
    assert np.ptp(widths) < 1e-3 and np.ptp(heights) < 1e-3      # every panel the same size, both rows
    rows = {}
    for b in boxes:
        rows.setdefault(round(b.y0, 3), []).append(round(b.x0, 3))
    starts = sorted(sorted(xs) for xs in rows.values())
    longest = max(starts, key=len)
    for xs in starts:                                              # each row's panels sit under the longest row's
        assert xs == longest[:len(xs)], rows
    # readable: nothing below 8 pt, and a figure no wider than a notebook shows unscaled (~10 in at 100 dpi)
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
    assert min(sizes) >= 8
    assert fig.get_size_inches()[0] <= 11
    # nothing clipped: everything drawn lies inside the figure
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())             # inches
    w, h = fig.get_size_inches()
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 and drawn.y1 <= h + 0.01, drawn


@pytest.mark.parametrize("n_rows,n_cols,scale", [(1, 4, 1.0), (6, 8, 1.2), (7, 10, 1.0), (3, 2, 2.0)])
def test_image_grid_title_sits_right_above_the_images(n_rows, n_cols, scale):
    rows = {("a much longer row label (held out)" if r == n_rows - 1 else f"row {r}"): _images(n_cols)
            for r in range(n_rows)}
    fig = viz.image_grid(rows, n_cols=n_cols, title="a title over the grid", scale=scale)
    fig.canvas.draw()
    top_of_images = max(ax.get_position().y1 for ax in _image_axes(fig))
    title = _extent(fig._suptitle, fig)
    gap = title.y0 - top_of_images                                  # figure coordinates
    assert 0 <= gap <= 0.15 / fig.get_size_inches()[1]              # at most 0.15 in, whatever the height
    assert title.y1 <= 1.0
    for ax in fig.axes:                                             # row labels not clipped on the left
        if ax.get_ylabel():
            assert _extent(ax.yaxis.label, fig).x0 >= 0, ax.get_ylabel()


def test_jacobian_suptitle_overlaps_no_panel_title():
    jac = {name: {"real": RNG.gamma(2, 1, (10, 5)), "fake": RNG.gamma(3, 1, (10, 5))}
           for name in ("no fine-tune", "CR + perturbation")}
    fig = viz.jacobian_figure(jac, n_steps=10, k=3, title="DDIM step Jacobian norm along the trajectory")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    sup = fig._suptitle.get_window_extent(renderer)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_title()
        assert not sup.overlaps(ax.title.get_window_extent(renderer)), ax.get_title()
        assert not sup.overlaps(ax.get_window_extent(renderer))
    assert fig._suptitle.get_window_extent(renderer).y1 <= fig.bbox.y1 + 1


def test_reconstruction_panel_shows_three_images_and_title():
    a = _images(1)[0]
    fig = viz.reconstruction_panel(a, 255 - a, "fake | family gan | test row 3")
    assert len(_image_axes(fig)) == 0 and sum(bool(ax.images) for ax in fig.axes) == 3   # axes off, images on
    assert fig._suptitle.get_text() == "fake | family gan | test row 3"


class _View:
    def __init__(self, lam, k):
        self.lam, self.k = lam, k

    def reconstruct(self, x):
        return x * 0.5

    def distance(self, x, rec):
        return (x - rec).abs().flatten(1).mean(1)


def test_explorer_picks_family_then_image_and_titles_the_label(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ipywidgets")
    test = pd.DataFrame({"family": ["gan", "real", "ldm", "real", "gan", "ldm", "gan"],
                         "label": [1, 0, 1, 0, 1, 1, 1],
                         "role": ["seen", "real", "held_out", "real", "seen", "held_out", "seen"]})
    x_test = torch.rand(len(test), 3, 8, 8) * 2 - 1
    calls, titles = [], []

    def with_settings(model, lam=None, k=None):
        calls.append((lam, k))
        return _View(lam, k)

    panel = viz.reconstruction_panel
    monkeypatch.setattr(viz, "reconstruction_panel", lambda a, r, title: (titles.append(title), panel(a, r, title))[1])
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)

    explorer = viz.craft_explorer(object(), x_test, test, with_settings, lam_default=2.0, k_default=3, n_steps=10)
    assert len(calls) == 1 and calls[0] == (2.0, 3)                  # rendered once with the defaults, no waiting
    assert titles[0].startswith("real")
    family, image = explorer.family, explorer.image
    assert family in explorer.children and image in explorer.children
    assert [v for _, v in family.options] == ["real", "gan", "ldm"]
    assert [v for _, v in image.options] == [1, 3]                     # the real rows
    sliders = {w.description: w for w in explorer.children if hasattr(w, "max")}
    assert sliders["lambda"].value == 2.0 and sliders["k"].value == 3 and sliders["k"].max == 10

    family.value = "ldm"
    assert [v for _, v in image.options] == [2, 5]
    assert len(calls) == 2                                           # one redraw for the new family's first image
    assert "fake" in titles[-1] and "ldm" in titles[-1] and "held out" in titles[-1] and "row 2" in titles[-1]

    image.value = 5
    sliders["k"].value = 5
    assert calls[-1] == (2.0, 5) and "row 5" in titles[-1]
