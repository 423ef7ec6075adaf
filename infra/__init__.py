"""The bottom layer: what both stages (the VQ-GAN and the prior) share.

Errors and the one-line CLI error handling, atomic file writes, image I/O and PSNR, the typed
config reader, run directories and checkpoints, the step-indexed batch order and per-step RNG,
the one seeded split, and the one Trainer builder. It imports no other package of this project.
"""
