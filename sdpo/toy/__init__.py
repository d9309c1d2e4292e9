"""Toy coding world: problem generator, pretraining corpus and a small from-scratch model."""
