"""Metrics against closed forms and independent references (scikit-image, transformers), and the eval CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.cli import main
from sfumato.evaluation import metrics
from sfumato.evaluation.features import image_features


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([1.0, 2.0, 0.0])  # same covariance: distance = |mu|^2 = 5
    assert metrics.frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)


def test_frechet_distance_diagonal_gaussians_exact():
    from scipy.linalg import hadamard

    h = hadamard(8)[:, 1:].astype(np.float64)  # zero-mean orthogonal columns: sample covariance = 8/7 I
    a = h * np.array([1, 2, 3, 1, 1, 1, 1]) + 5.0
    b = h * np.array([2, 2, 1, 1, 1, 1, 3]) - 1.0
    var_a, var_b = np.var(a, axis=0, ddof=1), np.var(b, axis=0, ddof=1)
    expected = 7 * 36.0 + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()  # |Δμ|² + Σ(σa - σb)²
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_singular_covariances_stay_finite():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 64))  # fewer samples than dimensions: singular covariances
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    value = metrics.frechet_distance(a, rng.normal(size=(12, 64)) + 0.5)
    assert np.isfinite(value) and value > 64 * 0.25
    with pytest.raises(Exception, match="feature sizes differ"):
        metrics.frechet_distance(a, a[:, :3])


def _naive_mmd(x, y):
    k = lambda p, q: (p @ q / x.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_its_formula():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(9, 5)) + 0.3
    assert metrics.polynomial_mmd(x, y) == pytest.approx(_naive_mmd(x, y), rel=1e-10)
    mean, std = metrics.kernel_inception_distance(x, y, subsets=5, subset_size=9)  # every subset is the full set
    assert mean == pytest.approx(_naive_mmd(x, y), rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)
    big_x, big_y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = metrics.kernel_inception_distance(big_x, big_y, subsets=20, subset_size=100)
    apart, _ = metrics.kernel_inception_distance(big_x, big_y + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.05 < apart


def test_inception_score_bounds():
    uniform = np.zeros((20, 10))
    assert metrics.inception_score(uniform, splits=2)[0] == pytest.approx(1.0)
    confident = np.full((10, 10), -50.0)
    confident[np.arange(10), np.arange(10)] = 50.0  # every image sure of a different class
    assert metrics.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
def test_psnr_ssim_match_scikit_image(name):
    from skimage import data
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = getattr(data, name)()
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).normal(0, 15, a.shape).round(), 0, 255).astype(np.uint8)
    channel = 2 if a.ndim == 3 else None
    expected_ssim = structural_similarity(a, noisy, channel_axis=channel, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255)
    A, B = Image.fromarray(a), Image.fromarray(noisy)
    assert metrics.psnr(A, B) == pytest.approx(peak_signal_noise_ratio(a, noisy, data_range=255), abs=1e-4)
    assert metrics.ssim(A, B) == pytest.approx(expected_ssim, abs=1e-6)
    assert metrics.ssim(A, A) == pytest.approx(1.0) and metrics.psnr(A, A) == float("inf")


def test_temporal_ssim_of_a_gif(tmp_path):
    from skimage import data

    base = Image.fromarray(data.camera()).resize((64, 64)).convert("RGB")
    frames = [base, base.point(lambda v: min(255, v + 4)), base.rotate(20)]  # GIF merges equal frames
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    from sfumato.animation.video import read_frames

    mean, values = metrics.temporal_ssim(read_frames(tmp_path / "clip.gif"))
    assert len(values) == 2 and values[0] > 0.95 and values[1] < 0.7
    assert mean == pytest.approx(np.mean(values))
    report = metrics.temporal_report(read_frames(tmp_path / "clip.gif"))
    assert report["worst_pair"] == 1 and report["temporal_ssim_worst"] == values[1]
    assert report["flicker"] == pytest.approx(np.mean([
        np.abs(np.asarray(b.convert("L"), float) - np.asarray(a.convert("L"), float)).mean() / 255
        for a, b in zip(read_frames(tmp_path / "clip.gif"), read_frames(tmp_path / "clip.gif")[1:])]))


def test_retrieval_ranks():
    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.1, 0, 0], [0.9, 1, 0, 0], [0, 0, 0.2, 1]], dtype=np.float32)
    ranks = metrics.retrieval_ranks(queries, gallery, [0, 0, 2])
    assert ranks.tolist() == [0, 1, 1]
    assert metrics.top_k_accuracy(ranks, 1) == pytest.approx(1 / 3) and metrics.top_k_accuracy(ranks, 2) == 1.0


def test_open_nsfw_features_are_1024_d_and_deterministic():
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    first = image_features(images)
    assert first.shape == (2, 1024) and np.isfinite(first).all()
    np.testing.assert_allclose(image_features(images), first, rtol=1e-5)
    assert np.abs(first[0] - first[1]).max() > 1e-3


def test_fid_inception_from_a_converted_pickle(tmp_path, capsys):
    """A pytorch-fid style .pth (random weights) -> sfumato convert -> inception extractor: 2048-d + 1008 logits."""
    from sfumato.evaluation.features import load_extractor
    from sfumato.evaluation.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    state = net.state_dict()
    # 94 BasicConv2d (conv + 5 BN tensors each) + fc: the reference Inception3 layout without aux logits, 1008 classes
    assert len(state) == 94 * 6 + 2 and state["fc.weight"].shape == (1008, 2048)
    torch.save(state, tmp_path / "pt_inception.pth")
    target = tmp_path / "inception.safetensors"
    assert main(["convert", str(tmp_path / "pt_inception.pth"), str(target), "--allow-pickle"]) == 0
    extractor = load_extractor(f"inception:{target}")
    images = [Image.new("RGB", (40, 40), c) for c in ((200, 30, 30), (30, 30, 200))]
    feats, logits = extractor.features(images), extractor.logits(images)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and extractor.name == "inception-v3-fid-pool2048"
    with torch.no_grad():
        pixels = torch.tensor(np.stack([np.asarray(im) for im in images]), dtype=torch.float32).permute(0, 3, 1, 2)
        direct, _ = net(pixels / 255)
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-4, atol=1e-5)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(Exception, match="not an FID Inception"):
        load_extractor(str(tmp_path / "other.safetensors"))


def test_clip_score_matches_transformers_forward(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from sfumato.evaluation.clip_score import ClipScorer
    from sfumato.models.tiny import build_tiny_clip

    folder = build_tiny_clip(tmp_path / "clip")
    rng = np.random.RandomState(20)
    images = [Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(6)]
    captions = ["a red apple", "a cat", "dog", "green tree", "blue sky", "house"]
    scorer = ClipScorer(folder)
    sims = scorer.similarities(images, captions)
    model, processor = CLIPModel.from_pretrained(str(folder)), CLIPProcessor.from_pretrained(str(folder))
    with torch.no_grad():
        out = model(**processor(text=captions, images=images, return_tensors="pt", padding=True))
    expected = (out.logits_per_image.diag() / model.logit_scale.exp()).detach().numpy()
    np.testing.assert_allclose(sims, expected, atol=1e-5)
    np.testing.assert_allclose(scorer.scores(images, captions), 100 * np.clip(expected, 0, None), atol=1e-3)


def _folder(path, colors, size=32):
    path.mkdir(parents=True)
    for i, c in enumerate(colors):
        Image.new("RGB", (size, size), c).save(path / f"{i:02d}.png")
    return path


@pytest.mark.slow
def test_eval_cli_fid_kid_psnr_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(3)
    real = _folder(tmp_path / "real", [tuple(int(v) for v in rng.integers(0, 255, 3)) for _ in range(6)])
    fake = _folder(tmp_path / "fake", [tuple(int(v) for v in rng.integers(0, 255, 3)) for _ in range(6)])
    assert main(["eval", "fid", "--real", str(real), "--fake", str(fake), "--save", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FID (open-nsfw-resnet50-pool1024): ") and "[6 real, 6 fake]" in out
    assert main(["eval", "fid", "--real", str(real), "--fake", str(real), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == pytest.approx(0.0, abs=1e-2)
    assert main(["eval", "kid", "--real", str(real), "--fake", str(fake), "--subsets", "3", "--save",
                 str(tmp_path / "ev")]) == 0
    assert "KID (open-nsfw-resnet50-pool1024)" in capsys.readouterr().out
    assert main(["eval", "psnr", str(real), str(real)]) == 0
    assert "inf dB" in capsys.readouterr().out
    assert main(["eval", "is", "--fake", str(fake)]) == 2
    assert "no class logits" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "fid", "--real", str(real), "--fake", str(tmp_path / "empty")]) == 2
    assert "has no images" in capsys.readouterr().err
    (fake / "00.png").rename(fake / "zz.png")
    assert main(["eval", "ssim", str(real), str(fake)]) == 2
    assert "different file names" in capsys.readouterr().err
    assert main(["eval", "report", str(tmp_path / "ev")]) == 0
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| fid |" in report and "| kid |" in report


@pytest.mark.slow
def test_eval_steps_and_report_on_a_tiny_model(tmp_path, sd1, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\n# a comment\ncat face\n")
    out = tmp_path / "sweep"
    assert main(["eval", "steps", "--model", str(sd1), "--prompts", str(prompts), "--samplers", "Euler a,DDIM",
                 "--steps", "2,4", "--reference-steps", "8", "--out", str(out)]) == 0
    from sfumato.evaluation.sweep import read_csv

    rows = read_csv(out / "steps.csv")
    assert [(r["sampler"], r["steps"]) for r in rows] == [("Euler a", 2), ("Euler a", 4), ("DDIM", 2), ("DDIM", 4)]
    ddim = {r["steps"]: r for r in rows if r["sampler"] == "DDIM"}
    assert ddim[4]["ref_psnr"] > ddim[2]["ref_psnr"] and 0 < ddim[4]["ref_ssim"] <= 1  # closer to converged
    for name in ("ref_psnr-vs-steps.png", "ref_ssim-vs-steps.png", "report.md", "sweep.json"):
        assert (out / name).is_file()
    assert "Cheapest setting within 2 % of the best ref_ssim" in (out / "report.md").read_text()
    assert main(["eval", "steps", "--model", str(sd1), "--prompts", str(tmp_path / "none.txt"), "--out",
                 str(out)]) == 2


def test_choose_default_prefers_the_cheapest_good_setting():
    from sfumato.evaluation.report import choose_default

    rows = [{"sampler": "A", "steps": 10, "seconds_per_image": 1.0, "top1": 0.50},
            {"sampler": "A", "steps": 20, "seconds_per_image": 2.0, "top1": 0.60},
            {"sampler": "B", "steps": 12, "seconds_per_image": 1.2, "top1": 0.60},
            {"sampler": "B", "steps": 30, "seconds_per_image": 3.0, "top1": 0.61}]
    assert (choose_default(rows, "top1")["sampler"], choose_default(rows, "top1")["steps"]) == ("B", 12)
    rows_fid = [{**r, "fid": 100 - 100 * r["top1"]} for r in rows]
    assert choose_default(rows_fid, "fid")["steps"] == 30


@pytest.mark.slow
def test_grid_cli_lays_out_labelled_cells(tmp_path, sd1, capsys):
    out = tmp_path / "grid.png"
    assert main(["grid", "red apple", "--model", str(sd1), "--x", "sampler=Euler a,DDIM", "--y", "steps=1,2,3",
                 "--z", "cfg_scale=1,7", "--seed", "5", "--min-cell", "64", "-o", str(out)]) == 0
    assert "12 cells, seed 5" in capsys.readouterr().out
    grid = Image.open(out)
    assert grid.width > 2 * 2 * 64 and grid.height > 3 * 64
    assert main(["grid", "red apple", "--model", str(sd1), "--x", "colour=red", "-o", str(out)]) == 2
    assert "not a request field" in capsys.readouterr().err


def test_parse_axis_types_and_prompt_sr():
    from sfumato.evaluation.grid import apply_axis, parse_axis
    from sfumato.requests import GenerationRequest

    assert parse_axis("cfg=2, 7.5").values == [2.0, 7.5]
    assert parse_axis("steps=10,20").values == [10, 20]
    assert parse_axis("size=64x32,32x64").values == [(64, 32), (32, 64)]
    assert parse_axis('negative_prompt="blurry, dark",ugly').values == ["blurry, dark", "ugly"]
    sr = parse_axis("prompt_sr=apple,pear")
    assert apply_axis(GenerationRequest("red apple"), sr, "pear").prompt == "red pear"
    with pytest.raises(Exception, match="not a valid int"):
        parse_axis("steps=ten")


def test_reference_classifier_extractor_round_trip(tmp_path):
    """A classifier trained on 4 references tells shifted, blurred copies apart; saved and loaded as an extractor."""
    from PIL import ImageDraw, ImageFilter

    from sfumato.evaluation.classifier import save_classifier, train_classifier
    from sfumato.evaluation.features import load_extractor

    shapes = []
    for i, color in enumerate(((220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40))):
        image = Image.new("RGB", (32, 32), "white")
        draw = ImageDraw.Draw(image)
        (draw.ellipse if i % 2 else draw.rectangle)((6, 6, 26, 26), fill=color)
        shapes.append(image)
    model = train_classifier(shapes, size=32, epochs=40, seed=0)
    path = save_classifier(model, tmp_path / "clf.safetensors", 32)
    extractor = load_extractor(f"classifier:{path}")
    assert extractor.name.startswith("reference-classifier-")
    queries = [s.transform(s.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, -1), fillcolor="white")
               .filter(ImageFilter.GaussianBlur(0.8)) for s in shapes]
    feats = extractor.features(queries)
    assert feats.shape == (4, 128)
    ranks = metrics.retrieval_ranks(feats, extractor.features(shapes), [0, 1, 2, 3])
    assert ranks.tolist() == [0, 0, 0, 0]
