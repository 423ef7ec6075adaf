"""The evaluation harness: how close generated samples are to real data.

    metrics   feature-space metrics: FID/KID/IS through torch-fidelity, precision/recall/density/
              coverage through prdc, a float64 Fréchet distance for non-Inception features
    images    Inception features of image sets (folders, ADM .npz) through torch-fidelity, with
              local weights only, and cached statistics files
    tokens    token-grid evaluation for datasets without a VQ-GAN: a small classifier trained on
              the train split gives the features; reference rows say what the numbers mean
    report    the printed tables and the JSON file

It imports third-party libraries and `infra` only.
"""
