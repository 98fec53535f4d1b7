"""The competition's fixed facts, for every module and the light commands: standard library only.

``python -m kit.build_kernel`` needs the cell types and the slug but none of numpy, pandas, numba,
cv2 or torch, so these facts live here rather than beside the code that reads the data. The kit's
own defaults and the commands' argument types are ``kit.cli``'s.
"""
from __future__ import annotations

COMPETITION_SLUG = "sartorius-cell-instance-segmentation"
IMAGE_SHAPE = (520, 704)  # (height, width) of every competition image
CELL_TYPES = ("cort", "astro", "shsy5y")  # one-hot channel order
# LIVECell's eight cell lines (its file-name prefixes, lower case), shipped in the competition's input
# as LIVECell_dataset_2021/. SH-SY5Y is the competition's shsy5y line itself; the seven others have no
# competition type, and the one-hot variants see all-zero cell-type planes for them (kit.model.encoding.model_input).
LIVECELL_CELL_LINES = ("a172", "bt474", "bv2", "huh7", "mcf7", "shsy5y", "skbr3", "skov3")
