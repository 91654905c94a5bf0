"""Training SAM as in the paper's appendix A: simulated interactive prompting, losses,
optimizer and the train step, all pure functions with explicit PRNG keys and static shapes."""
