"""The training stage: a run's settings and state (``config``), its stages as asked for (``stage_options``,
standard library only) and as they follow each other (``stages``), the data on the device (``batches``),
the set-up (``setup``), the loop and evaluation (``loop``), the run folder's files (``run_folder``), and
the run itself (``run``, what ``kit.train`` calls).

May import the leaves, ``kit.data`` and ``kit.model``; never ``kit.inference`` (training and inference
share the extraction through the leaf ``kit.postprocess``), ``kit.kaggle`` or a command. Imports nothing
here, so that the kernel builder's ``kit.training.stage_options`` stays light.
"""
