"""Training: the Trainer (one epoch of adversarial training, validation, its state) and the captured step."""
