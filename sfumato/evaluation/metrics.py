"""Image-quality numbers: FID, KID, Inception Score, PSNR, SSIM (also temporal) and retrieval adherence.

Distribution metrics take feature arrays from an extractor (`sfumato.evaluation.features`); pixel
metrics take PIL images and use torchmetrics (Wang et al. SSIM: 11×11 Gaussian window, σ = 1.5).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sfumato.errors import InvalidRequest
from sfumato.evaluation.images import unit_tensor

SQRTM_EPS = 1e-6


def _check_features(a: np.ndarray, b: np.ndarray, minimum: int = 2) -> None:
    if len(a) < minimum or len(b) < minimum:
        raise InvalidRequest(f"need at least {minimum} images on each side, got {len(a)} and {len(b)}")
    if a.shape[1] != b.shape[1]:
        raise InvalidRequest(f"feature sizes differ ({a.shape[1]} vs {b.shape[1]}): use one extractor for both sets")


def sqrtm_product(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """sqrt(s1 @ s2) for covariance matrices, stable for singular ones.

    As in pytorch-fid: when the product is near-singular (non-finite root), both matrices get
    `SQRTM_EPS` added to the diagonal; a tiny imaginary part from rounding is dropped, a large one
    is an error.
    """
    from scipy import linalg

    root, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(root).all():
        offset = np.eye(s1.shape[0]) * SQRTM_EPS
        root = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ArithmeticError(f"matrix square root has a large imaginary part ({np.abs(root.imag).max():.3g})")
        root = root.real
    return root


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's)."""
    _check_features(a, b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = sqrtm_product(s1, s2)
    return float(max(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))


def polynomial_mmd(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³ (Bińkowski et al. 2018)."""
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    m, n = len(a), len(b)
    return float((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
                 - 2 * k_ab.mean())


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial MMD² over random subsets."""
    _check_features(a, b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) from class logits; mean and std over `splits` parts."""
    if len(logits) < splits:
        raise InvalidRequest(f"Inception Score needs at least {splits} images (one per split), got {len(logits)}")
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _check_pair(a: Image.Image, b: Image.Image) -> None:
    if a.size != b.size:
        raise InvalidRequest(f"image sizes differ: {a.size[0]}x{a.size[1]} vs {b.size[0]}x{b.size[1]}")


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB over RGB in [0, 1] (inf for identical images)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(a, b)
    x, y = unit_tensor([a]), unit_tensor([b])
    if bool((x == y).all()):
        return float("inf")
    return float(peak_signal_noise_ratio(x, y, data_range=1.0))


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Structural similarity over RGB (mean of the channels), Gaussian window 11 / σ 1.5.

    Averaged over the positions whose window lies inside the image, as in Wang et al.'s reference
    code and scikit-image (torchmetrics' own mean also counts the reflected border).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(a, b)
    if min(a.size) < 11:
        raise InvalidRequest(f"SSIM needs images of at least 11x11 pixels, got {a.size[0]}x{a.size[1]}")
    _, full = structural_similarity_index_measure(unit_tensor([a]).double(), unit_tensor([b]).double(),
                                                  data_range=1.0, return_full_image=True)
    return float(full[..., 5:-5, 5:-5].mean())


def temporal_ssim(frames: list[Image.Image]) -> tuple[float, list[float]]:
    """Mean SSIM between consecutive frames (temporal consistency of a sequence) and the per-pair values."""
    if len(frames) < 2:
        raise InvalidRequest(f"temporal SSIM needs at least 2 frames, got {len(frames)}")
    values = [ssim(a, b) for a, b in zip(frames, frames[1:])]
    return float(np.mean(values)), values


def flicker(frames: list[Image.Image]) -> float:
    """Mean absolute frame-to-frame change of luminance (ITU-R 601 luma, 0..1 scale), averaged over pixels and pairs:
    0 for a still sequence, larger for flickering ones."""
    if len(frames) < 2:
        raise InvalidRequest(f"flicker needs at least 2 frames, got {len(frames)}")
    luma = [np.asarray(frame.convert("L"), dtype=np.float64) / 255.0 for frame in frames]
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(luma, luma[1:])]))


def temporal_report(frames: list[Image.Image]) -> dict[str, float | int | list[float]]:
    """Temporal consistency of a sequence: mean and worst consecutive-pair SSIM (and which pair), and flicker."""
    mean, values = temporal_ssim(frames)
    worst = int(np.argmin(values))
    return {"frames": len(frames), "temporal_ssim": mean, "temporal_ssim_worst": values[worst], "worst_pair": worst,
            "flicker": flicker(frames), "per_pair": values}


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, targets: list[int]) -> np.ndarray:
    """Rank (0 = best) of each query's target among the gallery, by cosine similarity."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = q @ g.T
    target_sims = sims[np.arange(len(targets)), targets]
    return (sims > target_sims[:, None]).sum(axis=1)


def top_k_accuracy(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose target ranks among the first k."""
    return float((np.asarray(ranks) < k).mean())
