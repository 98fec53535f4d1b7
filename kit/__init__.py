"""kit: train U-Net variants for Sartorius Cell Instance Segmentation, score exactly as the
leaderboard does, and build offline Kaggle kernels.

The commands (``python -m kit.X``) and the leaves everything may use sit here; the library lives in
the stage packages ``data``, ``model``, ``training``, ``inference`` and ``kaggle`` (docs/architecture.md).
Imports nothing, so that each command loads only what it needs."""
