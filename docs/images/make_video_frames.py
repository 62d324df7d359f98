"""Regenerate docs/images/video-frames.png: four frames of a video annotated by `ssd detect`, as one picture.

    PYTHONPATH=src python docs/images/make_video_frames.py ssd-demo/run/model.ckpt ssd-demo/data/VOC/VOC2007/JPEGImages/0020{40,33,22,15}.jpg

The video is a slow pan over the given images (12 frames each at 12 fps, H.264, written with PyAV); `ssd detect`
annotates it; frames spread over the result are tiled 2 x 2 with their index and time. Needs the [video] extra.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

RATE, PER_IMAGE, MARGIN = 12, 12, 24

checkpoint, images = sys.argv[1], [Path(p) for p in sys.argv[2:]]
out = Path(__file__).resolve().parent / "video-frames.png"
pictures = [np.asarray(Image.open(p).convert("RGB")) for p in images]
h = min(p.shape[0] for p in pictures) - MARGIN
w = min(p.shape[1] for p in pictures) - MARGIN
h, w = h // 2 * 2, w // 2 * 2
with tempfile.TemporaryDirectory() as tmp:
    clip = Path(tmp) / "pan.mp4"
    container = av.open(str(clip), "w")
    stream = container.add_stream("libx264", rate=RATE, options={"crf": "18"})
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for pixels in pictures:
        for k in range(PER_IMAGE):
            dx, dy = 2 * k * MARGIN // (2 * PER_IMAGE), k * MARGIN // (2 * PER_IMAGE)
            frame = np.ascontiguousarray(pixels[dy : dy + h, dx : dx + w])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode(None))
    container.close()
    subprocess.run([sys.executable, "-m", "ssd.cli", "detect", checkpoint, str(clip), "--out", str(Path(tmp) / "out"),
                    "--device", "cpu"], check=True)  # fmt: skip
    with av.open(str(Path(tmp) / "out" / "pan.mp4")) as c:
        frames = [(f.to_image(), float(f.time)) for f in c.decode(video=0)]
picks = [round(i * (len(frames) - 1) / 3) for i in range(4)]
sheet = Image.new("RGB", (2 * w + 6, 2 * h + 6), "white")
for n, i in enumerate(picks):
    image, t = frames[i]
    x, y = (n % 2) * (w + 6), (n // 2) * (h + 6)
    sheet.paste(image, (x, y))
    ImageDraw.Draw(sheet).text((x + 6, y + h - 18), f"frame {i}, {t:.2f} s", fill="white", stroke_width=2, stroke_fill="black")
sheet.save(out, optimize=True)
print(f"wrote {out} ({sheet.width}x{sheet.height}, frames {picks} of {len(frames)})")
