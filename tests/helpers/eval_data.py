"""Sentences the evaluation tests build their tasks and texts from."""
SENTENCES = [
    "The model reads the shards one sample at a time.", "Every rank holds a slice of each weight matrix.",
    "A checkpoint is written to a temporary directory first.", "The tokenizer was trained on the same text.",
    "Gradients are reduced over the data parallel group.", "The learning rate warms up and then decays.",
    "Validation loss is measured every hundred steps.", "The pipeline sends activations to the next stage.",
]
