"""The paper's second finding: how much of an input perturbation survives the first convolution stage."""
