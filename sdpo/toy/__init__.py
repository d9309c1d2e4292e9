"""Toy coding world (issue 10): problem generator, pretraining corpus and a small from-scratch model."""
