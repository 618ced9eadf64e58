"""Video files -> uint8 frames with PyAV (`av` on PyPI; FFmpeg inside the wheel), no TensorFlow.

`frame_count(path)` reads the container's frame count (the stream header, else by counting packets without
decoding); `read_frames(path, indices)` decodes the video once, up to the last wanted frame, and returns
(len(indices), H, W, 3) uint8 RGB in the order asked (repeats allowed). A frame index past the frames actually
decodable (headers can over-count) reads the last decoded frame. Every failure is a `VideoError` naming the file;
the pipeline turns it into a UserError or, when configured, a counted skip.
"""

from __future__ import annotations

import numpy as np


class VideoError(Exception):
  """A video that cannot be decoded; the message names the file."""


def _open(path: str):
  import av  # only when a video is read: the image paths never need FFmpeg
  try:
    container = av.open(path)
  except Exception as e:  # av raises its FFmpegError subclasses, OSError, or ValueError on odd input
    raise VideoError(f"cannot open video {path}: {type(e).__name__}: {e}") from None
  if not container.streams.video:
    container.close()
    raise VideoError(f"{path} has no video stream")
  return container


def frame_count(path: str) -> int:
  container = _open(path)
  try:
    stream = container.streams.video[0]
    n = int(stream.frames or 0)
    if n <= 0:  # webm/mkv headers often omit it: count packets (no decoding)
      n = sum(1 for p in container.demux(stream) if p.size)
  except VideoError:
    raise
  except Exception as e:
    raise VideoError(f"cannot read video {path}: {type(e).__name__}: {e}") from None
  finally:
    container.close()
  if n <= 0:
    raise VideoError(f"video {path} has no frames")
  return n


def read_frames(path: str, indices) -> np.ndarray:
  wanted = sorted(set(int(i) for i in indices))
  if not wanted or wanted[0] < 0:
    raise ValueError(f"bad frame indices {indices!r}")
  last = wanted[-1]
  frames: dict[int, np.ndarray] = {}
  decoded = None
  container = _open(path)
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for i, frame in enumerate(container.decode(stream)):
      decoded = (i, frame)
      if i in wanted:
        frames[i] = frame.to_ndarray(format="rgb24")
      if i >= last:
        break
  except Exception as e:
    raise VideoError(f"cannot decode video {path}: {type(e).__name__}: {e}") from None
  finally:
    container.close()
  if decoded is None:
    raise VideoError(f"video {path} has no decodable frames")
  final_index, final = decoded
  if last not in frames:  # the header over-counted: clamp to the last frame that decoded
    frames[final_index] = final.to_ndarray(format="rgb24")
  return np.stack([frames[min(int(i), final_index)] for i in indices])
