"""The inference stage: an ensemble of weights and its prediction, the predict -> extract loop
(``ensemble``), the images a command predicts (``image_sets``), the cell-type classifier
(``type_classifier``), and the libraries of the inference commands: ``submit`` (``kit.infer``),
``tuning`` (``kit.tune``), ``pseudo_labelling`` (``kit.pseudo``), ``validation`` (``kit.validate``),
``boundary_fit`` (``kit.boundary_table``).

May import the leaves, ``kit.data`` and ``kit.model``; never ``kit.training``, ``kit.kaggle`` or a command.
Imports nothing here.
"""
