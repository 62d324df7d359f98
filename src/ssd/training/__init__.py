"""Training, in parts, in the order a run uses them.

- :mod:`ssd.training.config`: :class:`TrainConfig` (every option declared once), the recipes, the schedule
  (no torch: ``ssd train --help`` is built from it);
- :mod:`ssd.training.setup`: the run folder, the device and precision, the model, the step, the data stream;
- :mod:`ssd.training.step`: one optimiser step that never waits for the device;
- :mod:`ssd.training.state`: the clock, the skipped-step guard and ``last.ckpt``;
- :mod:`ssd.training.log`: ``config.json``, ``log.jsonl``, TensorBoard, the progress bar;
- :mod:`ssd.training.loop`: :func:`train`, which reads top to bottom: resolve the run, build, step.

``ssd.TrainConfig`` and ``ssd.train`` are the same objects.
"""
