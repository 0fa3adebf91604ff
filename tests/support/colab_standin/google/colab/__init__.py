"""STAND-IN for Colab's ``google.colab`` package, for executing the notebooks in tests.

The real one exists only on Colab VMs. Its presence makes ``provision`` detect Colab, which is
what the notebooks rely on; ``auth`` and ``drive`` record that they were called.
"""
