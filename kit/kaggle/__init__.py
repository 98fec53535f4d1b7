"""The Kaggle stage: building the kernels (``kernels``, ``kit.build_kernel``'s library), what the built
notebooks run (``notebook``), and the library versions a kernel checks before it starts (``compat``).

May import the leaves and every other stage, never a command. Imports nothing here: ``kit.build_kernel``
must load no heavy library (numpy, pandas, torch, ...) and stay under 0.3 s, and ``kernels`` is standard
library only.
"""
