"""The model stage: the variants as data (``variants``), the network (``network``), what it sees and says
(``encoding``: input and output), the checkpoint format and its files (``checkpoints``), the device and
precision (``hardware``), and the training losses (``losses``).

May import the leaves and ``kit.data``; not training, inference or kaggle, no command. Imports nothing
here: ``kit.model.variants`` is standard library only, and the light kernel builder uses it.
"""
