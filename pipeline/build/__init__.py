"""A whole zoo into the dataset: the run-one-model step, and the local and Ray runners that schedule it."""
