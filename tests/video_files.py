"""Small real video files for the clip-pipeline tests, written with PyAV: frame i (< 30) is a flat grey of value
`level(i)`, so the frames a pipeline read can be told from their pixels (`frame_index`)."""

import json
import os

import numpy as np

WIDTH, HEIGHT = 48, 32


def level(i: int) -> int:
  return 16 + 8 * i


def frame_index(frames: np.ndarray) -> list[int]:
  """(T, H, W, 3) uint8 (or [-1, 1] floats) flat frames -> the index each one shows."""
  x = np.asarray(frames, np.float64)
  if x.dtype != np.uint8 and x.max() <= 1.0:
    x = (x + 1.0) * 127.5
  return [int(round((float(f.mean()) - 16) / 8)) for f in x]


def write_video(path: str, num_frames: int, codec: str = "mpeg4") -> str:
  import av
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    if codec == "mpeg4":
      stream.options = {"qscale": "1"}
    else:  # libvpx: constant quality
      stream.options = {"crf": "4", "b": "0"}
    for i in range(num_frames):
      img = np.full((HEIGHT, WIDTH, 3), level(i), np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def k400_list(root: str, lengths: dict[str, tuple[int, int]], split: str = "train") -> str:
  """<root>/<split>.txt over videos/<name>.mp4; `lengths`: name -> (frames, label)."""
  lines = []
  for name, (n, label) in lengths.items():
    write_video(os.path.join(root, "videos", f"{name}.mp4"), n)
    lines.append(f"videos/{name}.mp4 {label}")
  with open(os.path.join(root, f"{split}.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return root


SSV2_TEMPLATES = ["Pushing [something] from left to right", "Holding [something]", "Dropping [something]"]


def ssv2_release(root: str, videos: dict[str, tuple[int, int]]) -> str:
  """The SSv2 layout: labels/train/validation JSONs and 20bn-something-something-v2/<id>.webm (vp8);
  `videos`: id -> (frames, template index); the first two ids are the validation split."""
  labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(SSV2_TEMPLATES)}
  with open(os.path.join(root, "something-something-v2-labels.json"), "w") as f:
    json.dump(labels, f)
  entries = []
  for vid, (n, t) in videos.items():
    write_video(os.path.join(root, "20bn-something-something-v2", f"{vid}.webm"), n, codec="libvpx")
    entries.append({"id": vid, "label": SSV2_TEMPLATES[t].replace("[something]", "a cup"),
                    "template": SSV2_TEMPLATES[t], "placeholders": ["a cup"]})
  for split, part in (("validation", entries[:2]), ("train", entries[2:])):
    with open(os.path.join(root, f"something-something-v2-{split}.json"), "w") as f:
      json.dump(part, f)
  return root
