"""The paper's analyses over a dataset: selection, depth profiles, pairing, PCA, shift, report."""
