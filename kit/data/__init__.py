"""The data stage: the competition's files (``sartorius``: its layout, ``train.csv``, images and their
headers, ``Sample``, cell diameters), LIVECell as the competition ships it (``livecell``), pseudo-label
files (``pseudo_labels``), and per-cell-type rescaling (``rescale``).

May import the leaves (``kit.competition``, ``kit.paths``, ``kit.files``, ``kit.progress``, ``kit.cli``,
``kit.rle``, ``kit.split``, ...) and itself; no other stage, no command. Imports nothing here, so that
``kit.data.X`` loads only what X needs.
"""
