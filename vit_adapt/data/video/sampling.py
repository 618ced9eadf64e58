"""Which frames of a video a clip reads: the official DyT / VideoMAE index rules, as pure functions of the video's
frame count (and a generator in training), so every mode can be checked exactly.

  dense      (K400) `num_frames` frames `stride` apart. Training: a window of (T - 1) * stride + 1 frames at a
             uniform start in [0, n - (T - 1) * stride); a video shorter than the window reads 0, s, 2s, ... and
             repeats its last index. Test: `views` windows evenly spaced over the video (one view: the central
             window), indices clamped to the last frame.
  segment    (SSv2, TSN) the frames 0..n-1 split into T segments of (n - 1) / T frames with rounded bounds
             [round(i * seg), round((i + 1) * seg)]. Training: one uniform frame of each segment (bounds
             inclusive). Test: view v of V reads start + (end - start) * (2v + 1) // (2V) of every segment (one view:
             the middle frame (start + end) // 2, as the official loader).

Python's `round` (ties to even) is what the official code uses; indices are plain Python ints.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vit_adapt.errors import UserError


def _check(n: int, num_frames: int) -> None:
  if n < 1:
    raise ValueError(f"a video with {n} frames has no clip")
  if num_frames < 1:
    raise UserError(f"config.video.num_frames={num_frames} must be >= 1.")


def dense_train(n: int, num_frames: int, stride: int, rng: np.random.Generator) -> list[int]:
  _check(n, num_frames)
  span = stride * (num_frames - 1)
  if span + 1 >= n:
    out: list[int] = []
    for i in range(num_frames):
      out.append(i * stride if i * stride < n else out[-1])
    return out
  start = int(rng.integers(n - span))
  return list(range(start, start + stride * num_frames, stride))


def dense_test(n: int, num_frames: int, stride: int, views: int) -> list[list[int]]:
  _check(n, num_frames)
  slide = max(n - ((num_frames - 1) * stride + 1), 0)
  out = []
  for v in range(views):
    start = slide // 2 if views == 1 else round(slide / (views - 1) * v)
    out.append([min(x + start, n - 1) for x in range(0, num_frames * stride, stride)])
  return out


def _segments(n: int, num_frames: int) -> list[tuple[int, int]]:
  seg = (n - 1) / num_frames
  return [(round(seg * i), round(seg * (i + 1))) for i in range(num_frames)]


def segment_train(n: int, num_frames: int, stride: int, rng: np.random.Generator) -> list[int]:
  del stride
  _check(n, num_frames)
  return [int(rng.integers(start, end + 1)) for start, end in _segments(n, num_frames)]


def segment_test(n: int, num_frames: int, stride: int, views: int) -> list[list[int]]:
  del stride
  _check(n, num_frames)
  segs = _segments(n, num_frames)
  return [[start + (end - start) * (2 * v + 1) // (2 * views) for start, end in segs] for v in range(views)]


# config.video.sampling -> (training indices, test views' indices)
SAMPLINGS: dict[str, tuple[Callable, Callable]] = {
    "dense": (dense_train, dense_test),
    "segment": (segment_train, segment_test),
}


def get(name: str) -> tuple[Callable, Callable]:
  if name not in SAMPLINGS:
    raise UserError(f"config.video.sampling={name!r}: use one of {', '.join(SAMPLINGS)}.")
  return SAMPLINGS[name]
