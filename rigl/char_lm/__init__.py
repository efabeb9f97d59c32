"""The RigL paper's character-level language model: a byte-level GRU on WikiText-103."""
