"""The gallery of example specs, installed as the package ``rnnc.gallery``."""
