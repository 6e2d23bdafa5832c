"""The pretrained zoo: pretrain -> verified load, clear errors for missing / corrupt / stale models, and a run that
starts from it (tiny profile, a zoo in a temporary folder)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from udet_core.core.errors import DataError
from udet_core.world import zoo
from udet_core.world.weights import default_weights


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    from udet_core.core.profiles import get_profile
    tiny = get_profile("tiny")
    p = replace(tiny, zoo=True, gduf=replace(tiny.gduf, pretrain_steps=4))
    root = tmp_path_factory.mktemp("zoo")
    zoo_dir, work = root / "zoo", root / "work"
    for name in zoo.ENTRIES:
        zoo.pretrain_one(p, name, zoo_dir=zoo_dir, work_dir=work, progress=False)
    return p, zoo_dir


def test_pretrain_writes_verified_models_with_cards(tiny_zoo):
    p, zoo_dir = tiny_zoo
    folders = zoo.verify(p, zoo_dir=zoo_dir)
    assert set(folders) == set(zoo.ENTRIES)
    for name, folder in folders.items():
        card = zoo.card(folder)
        assert card["key"] == zoo.key(p, name, zoo_dir) and card["steps"] > 0 and card["loss_curve"]
        assert card["quality"] and all(np.isfinite(v) for v in card["quality"].values())
        assert any(f.endswith(".safetensors") for f in card["files"]), card["files"]
        assert (folder / "MODEL_CARD.md").read_text().startswith(f"# {name}")
    assert zoo.card(folders["vae-train"])["photo_names"] == list(p.data.split_photos["train"])
    table = zoo.summary(p, zoo_dir)
    assert list(table.model) == list(zoo.ENTRIES) and (table.size_mb > 0).all() and (table.steps > 0).all()
    assert set(zoo.card(folders["vae-all"])["photo_names"]) == {n for v in p.data.split_photos.values() for n in v}


def test_a_corrupt_file_is_named_with_the_command_that_rebuilds_it(tiny_zoo, tmp_path):
    import shutil
    p, zoo_dir = tiny_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    weights = copy / "dcgan" / "generator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch.*pretrain --only dcgan") as e:
        zoo.path(p, "dcgan", copy)
    assert "generator.safetensors" in str(e.value)
    shutil.rmtree(copy / "featnet")
    with pytest.raises(DataError, match="zoo model missing.*pretrain --only featnet"):
        zoo.path(p, "featnet", copy)


def test_a_model_trained_with_other_configs_is_refused(tiny_zoo):
    p, zoo_dir = tiny_zoo
    other = replace(p, vae=replace(p.vae, steps=p.vae.steps + 1))
    with pytest.raises(DataError, match="trained with other configs"):
        zoo.path(other, "vae-train", zoo_dir)
    assert zoo.path(other, "pixel-ddpm", zoo_dir)   # a model that does not depend on the VAE stays valid
    assert zoo.path(replace(p, seed=7), "vae-train", zoo_dir)   # nor on the run's seed


def test_a_model_built_on_a_retrained_dependency_is_refused(tiny_zoo, tmp_path):
    import shutil
    p, zoo_dir = tiny_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    zoo.pretrain_one(replace(p, vae=replace(p.vae, lr=p.vae.lr / 2)), "vae-all", zoo_dir=copy, work_dir=tmp_path / "w",
                     progress=False)   # vae-all rebuilt (other weights), written under the original profile's name
    card = zoo.card(copy / "vae-all")
    card["key"] = zoo.key(p, "vae-all", copy)
    (copy / "vae-all" / "card.json").write_text(__import__("json").dumps(card))
    assert zoo.path(p, "vae-all", copy)
    with pytest.raises(DataError, match="on other zoo models"):
        zoo.path(p, "sdiv-all", copy)


def test_a_run_starts_from_the_zoo(tiny_zoo, tmp_path, monkeypatch):
    from udet_core.cli.reproduce import check_zoo
    from udet_core.data.manifest import load_images
    from udet_core.methods.base import fitted
    from udet_core.world.benchmark import benchmark_configs, build_benchmark
    p, zoo_dir = tiny_zoo
    monkeypatch.setattr(zoo, "ZOO_DIR", zoo_dir)
    monkeypatch.setattr("udet_core.core.profiles.PROFILES", {**__import__("udet_core.core.profiles").core.profiles.PROFILES,
                                                         "tiny-zoo": lambda: replace(p, name="tiny-zoo")})
    check_zoo("tiny-zoo")                                                     # verifies every model: no error
    bench = build_benchmark(p, tmp_path, progress=False)
    g = bench.generators
    assert g.vae_path == zoo_dir / "vae-train" / "vae" and g.backbone_path == zoo_dir / f"sdiv-{p.backbone}" / "pipeline"
    assert g.image_variation_path == zoo_dir / "sdiv-train" / "pipeline"
    assert benchmark_configs(p)[-1]["zoo"]["dcgan"] == zoo.content_key(p, "dcgan")
    images, df, _ = load_images(bench.manifest)
    det = fitted("unigendet", p, tmp_path, images, df, seed=0, weights=default_weights(p, tmp_path))
    pretrained = zoo.path(p, "unified") / "unigendet"
    from udet_core.methods.gduf import UniGenDet
    start = UniGenDet.load(pretrained)
    assert det.model.tokenizer.get_vocab() == start.tokenizer.get_vocab()   # fine-tuned from the pretrained model
    assert det.model.cfg.model == start.cfg.model and det.model.cfg.steps == p.gduf.steps
    moved = [k for k, v in det.model.model.state_dict().items() if not torch.equal(v, start.model.state_dict()[k])]
    assert moved, "GDUF must train the pretrained weights"


def test_reproduce_without_a_zoo_stops_before_any_notebook_with_one_message(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "UDET_ZOO": str(tmp_path / "no-zoo")}
    r = subprocess.run([sys.executable, "-m", "udet_core", "reproduce", "--run-dir", str(tmp_path / "run")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "zoo model missing" in r.stderr and "python -m udet_core pretrain --only" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "notebooks").exists()
