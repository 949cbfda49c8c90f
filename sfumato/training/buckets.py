"""Aspect-ratio bucketing (NovelAI-style, as the kohya / SD trainers do it).

Buckets step by `step` px from the maximum side down to the minimum side on each axis, plus the square
base bucket: max 1024, min 512 gives (512,1024), (576,1024) … (960,1024), (1024,512) … (1024,960),
(1024,1024) — 17 buckets. Each image goes to the bucket with the nearest aspect ratio
(argmin |bucket aspect − image aspect|) and is centre-cropped to that aspect and resized; an image
farther than `max_aspect_error` from every bucket is dropped. Images that cannot fill a whole batch in
their bucket go to a remainder bucket trained at the base resolution. Each epoch, buckets are drawn
with probability proportional to their remaining images so they run out together, and every batch
comes from one bucket.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Size = tuple[int, int]  # (width, height)


def make_buckets(max_side: int, min_side: int, step: int = 64) -> list[Size]:
    """Portrait buckets, landscape buckets, then the square base bucket."""
    if min_side > max_side:
        raise ValueError(f"bucket min side {min_side} is larger than max side {max_side}")
    sides = list(range(min_side, max_side, step))
    return [(s, max_side) for s in sides] + [(max_side, s) for s in sides] + [(max_side, max_side)]


def nearest_bucket(width: int, height: int, buckets: list[Size]) -> tuple[int, float]:
    """Index of the bucket with the nearest aspect ratio, and the aspect error."""
    aspect = width / height
    errors = [abs(bw / bh - aspect) for bw, bh in buckets]
    best = min(range(len(buckets)), key=errors.__getitem__)
    return best, errors[best]


@dataclass
class BucketPlan:
    """Where each image trains: `sizes[i]` is its (width, height), or None when dropped."""

    buckets: list[Size]
    base: Size
    sizes: list[Size | None]
    groups: dict[Size, list[int]] = field(default_factory=dict)  # training size -> image indices
    dropped: int = 0
    remainder: int = 0  # images moved to the base-resolution remainder bucket


def plan_buckets(image_sizes: list[Size], buckets: list[Size], batch_size: int, max_aspect_error: float = 0.5,
                 seed: int = 0, base: Size | None = None) -> BucketPlan:
    """Assign images to buckets once (so cached latents stay valid across epochs); `base` (default: the largest
    square-most bucket) also takes the images that cannot fill a batch in their own bucket."""
    base = base or max(buckets, key=lambda b: (min(b), b[0] * b[1]))
    members: dict[int, list[int]] = {}
    sizes: list[Size | None] = [None] * len(image_sizes)
    dropped = 0
    for i, (w, h) in enumerate(image_sizes):
        index, error = nearest_bucket(w, h, buckets)
        if error > max_aspect_error:
            dropped += 1
            continue
        members.setdefault(index, []).append(i)
    rng = random.Random(seed)
    groups: dict[Size, list[int]] = {}
    leftovers: list[int] = []
    for index in sorted(members):
        images = members[index][:]
        rng.shuffle(images)
        full = len(images) // batch_size * batch_size
        if buckets[index] == base:
            full = len(images)  # the base bucket is the remainder bucket: keeps everything
        if full:
            groups.setdefault(buckets[index], []).extend(sorted(images[:full]))
        leftovers.extend(images[full:])
    if leftovers:
        groups.setdefault(base, []).extend(sorted(leftovers))
    for size, images in groups.items():
        for i in images:
            sizes[i] = size
    return BucketPlan(buckets, base, sizes, groups, dropped, len(leftovers))


def epoch_batches(plan: BucketPlan, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, deterministic in (seed, epoch): each from one bucket, buckets drawn
    with probability proportional to their remaining images."""
    rng = random.Random(seed * 1_000_003 + epoch)
    queues: dict[Size, list[list[int]]] = {}
    for size in sorted(plan.groups):
        images = plan.groups[size][:]
        rng.shuffle(images)
        queues[size] = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    batches: list[list[int]] = []
    while queues:
        sizes = sorted(queues)
        remaining = [sum(len(b) for b in queues[s]) for s in sizes]
        size = rng.choices(sizes, weights=remaining)[0]
        batches.append(queues[size].pop(0))
        if not queues[size]:
            del queues[size]
    return batches
