"""The published filter databases of Gavrikov & Keuper (onnxzoo2filterdb layout): import and export.

``layout.py`` names the files, keys and columns; ``safe_pickle.py`` reads the PyTables
``meta`` key without running code from the file; ``reader.py`` opens a release (HDF5 out of
core, metadata from the ``meta`` key or the CSVs); ``validate.py`` checks it; ``metadata.py``
maps the release's columns to the models table; ``importer.py`` writes each model through the
extraction writer; ``export.py`` writes a filter dataset back in the authors' layout.
"""
