"""A seeded synthetic detection dataset of shapes, written in the Pascal VOC layout.

:class:`SyntheticConfig` -> for image ``i`` of split ``s``: :func:`render_image` -> an RGB image ``W x H`` and its
objects (class, devkit box, difficult, truncated) -> :func:`generate_synthetic` writes them as JPEG and VOC XML
with the image-set lists under ``<root>/VOC2007`` -> any VOC reader of this package (``ssd data voc``,
:func:`ssd.data.index.build_voc_index`) reads the folder unchanged.

What it writes
--------------
::

    <root>/VOC2007/
        JPEGImages/<id>.jpg            RGB, JPEG quality ``jpeg_quality``
        Annotations/<id>.xml           folder, filename, size (width, height, depth 3), segmented 0 and one
                                       <object> per shape: name, pose (Unspecified), truncated, difficult,
                                       bndbox xmin/ymin/xmax/ymax as 1-based inclusive integer pixels
        ImageSets/Main/<split>.txt     the ids of each split (``trainval`` and ``test``)
        ImageSets/Main/<class>_<split>.txt   devkit per-class lists: ``<id> 1`` (a non-difficult object of
                                       the class), ``0`` (only difficult ones), ``-1`` (none)
        classes.txt                    the class names, one per line, in label order (label i = line i)
        synthetic.json                 marker: generator, configuration and, once complete, the counts

Ids are six digits, numbered from ``000001`` over ``trainval`` then ``test`` (as VOC2007 numbers one folder).
A folder holding a dataset written before (its ``synthetic.json``) is replaced; any other non-empty folder is
refused unless ``overwrite`` is given. Use::

    from ssd.data.synthetic import DEMO_CONFIG, SyntheticConfig, generate_synthetic

    summary = generate_synthetic("data/shapes", DEMO_CONFIG, progress=True)   # or SyntheticConfig(seed=1, ...)
    print("\\n".join(summary.lines()))                                        # counts per split and class

Determinism
-----------
Image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, crc32(s), i])`` alone, so its content
depends neither on the other images nor on the size of the other split, and the same configuration gives
byte-identical files (for the same numpy and Pillow versions; the JPEG bytes are Pillow's encoding).

What each setting of :class:`SyntheticConfig` does
--------------------------------------------------
An object's **size** is the longest side of its box divided by the image's *shorter* side, the strictest reading
of "fraction of the image side": after resizing to a square input, each relative box side ``w / W`` and
``h / H`` is at most the size. The annotated box is the tight box of the pixels the shape covers at least half,
so it matches the drawing; it is the shape's full extent also where another object hides part of it.

- ``num_trainval``, ``num_test``: the images of the two splits.
- ``classes``: the class names in label order, each a shape of :data:`SHAPES`: ``circle``, ``square``, ``star``,
  ``ring`` and ``bar`` by default; ``triangle``, ``cross``, ``diamond``, ``hexagon``, ``crescent``, ``arrow`` and
  ``dash`` besides. Shapes are drawn with PIL, supersampled 4x for anti-aliased edges, with a random stretch
  where the class stays recognisable (a triangle 0.6-1.6, an ellipse-like circle at most 1.2, a square at most
  1.25, ...) and a random rotation (a full turn for symmetric-looking shapes, +-20 degrees for the square and
  the cross so they stay distinct from a diamond and an "x"). A ``bar`` (and a ``dash``, a bar cut into 3-4
  segments) lies along the x or the y axis and is 6-8 times as long as it is thick, so almost no prior of the
  ``small`` preset (aspect ratios up to 3) overlaps it at IoU 0.5: a box a times as long as thick reaches at
  most IoU sqrt(3a) / (2a - sqrt(3a)) with a 3:1 prior of the best size and place, under 0.5 from a = 6.75 up.
  It becomes a positive only through the forced best-prior match, which is why the demo fails when that match
  is broken (``bench/demo_ablation.py``). Bars and dashes are drawn at sizes 0.15-0.35 only (tiny difficult
  ones at the tiny sizes): a smaller one would be a line 2 px thick, and a longer one reaches the coarse maps,
  where few priors lie.
- ``image_size``: the smallest and largest side; width and height are drawn independently (the model resizes
  to its square input, so varied sizes and aspect ratios cost nothing). The background is textured: a linear
  gradient or a smooth random colour field, sometimes sinusoidal stripes at a random angle and period,
  sometimes clutter (thin polylines and open arcs in colours close to the background, 1-2 px wide, so nothing
  looks like a class), and pixel noise over everything.
- ``objects_per_image``: the fewest and most objects attempted in a non-empty image. Objects are placed
  largest first, so small ones are never hidden under big ones; an object that finds no place in 30 tries is
  dropped (big ones more often, so the share of small objects can be a little above ``small_fraction``).
- ``object_size``, ``small_size``, ``small_fraction``: a share ``small_fraction`` of the ordinary objects is
  drawn log-uniformly in ``[object_size[0], small_size)``, the rest in ``[small_size, object_size[1]]``; a
  shape's own sizes narrow the range drawn (a bar drawn "small" is drawn in 0.15-0.35), so a dataset with bars
  has fewer small objects than ``small_fraction``.
- ``max_iou``: a placement is accepted when its box's IoU with every earlier box is at most ``max_iou``, it
  covers at most half of any earlier box, it is not nearly concentric with one (a small circle centred on a
  big one would read as a ring), and every earlier object keeps at least 55% of its pixels visible. Each
  object's colour stands out from what lies under it (RGB distance >= 90 from the local background and from
  the objects it overlaps); ordinary objects are sometimes shaded by a linear gradient.
- ``difficult_fraction``, ``difficult_size``: that share of the objects is difficult (``difficult=1``,
  ignored by the VOC07 scorer): half tiny (size in ``difficult_size``), half low-contrast (RGB distance 14-28
  from the background under them).
- ``truncated_fraction``: that share of the objects of size >= ``small_size`` may cross the image border,
  keeping at least 60% of their area inside; where one does, it is ``truncated=1`` and its box is clipped to
  the image.
- ``empty_fraction``: that share of the images has no object at all.
- ``jpeg_quality``: the JPEG quality of the images.
- ``seed``: with the split and the index, the seed of each image (see Determinism).

The demo setting
----------------
:data:`DEMO_CONFIG` is the fixed setting ``ssd demo`` trains and evaluates on: 2000 ``trainval`` and 200
``test`` images of the five default classes, sides 224-320 px, 1-6 objects per image, sizes 0.08-0.6 (bars
0.15-0.35) with 32% of the ordinary objects other than bars drawn under 0.15, IoU between objects <= 0.4, 8%
difficult, 10% of the large objects truncated, 5% empty images, seed 0. It is spelled out field by field, so
changing the defaults of :class:`SyntheticConfig` does not change the demo. Its counts, and how the setting was
chosen: docs/performance.md, "The demo".
"""

from ssd.data.synthetic.config import DEMO_CONFIG, SyntheticConfig
from ssd.data.synthetic.render import SyntheticObject, render_image
from ssd.data.synthetic.shapes import DEFAULT_CLASSES, SHAPES
from ssd.data.synthetic.write import MARKER, SplitSummary, SyntheticSummary, annotation_xml, generate_synthetic

__all__ = [
    "SHAPES",
    "DEFAULT_CLASSES",
    "SyntheticConfig",
    "DEMO_CONFIG",
    "SyntheticObject",
    "SplitSummary",
    "SyntheticSummary",
    "render_image",
    "annotation_xml",
    "generate_synthetic",
    "MARKER",
]
