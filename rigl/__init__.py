"""rigl: sparse training (RigL, SET, SNFS, Static, SNIP, DNW, pruning) for TensorFlow 2 / Keras 3."""

name = 'rigl'
__version__ = '0.1.0'
