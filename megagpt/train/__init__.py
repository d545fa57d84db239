"""DeepSpeed training of the GPT: engines for the two layouts, the pretraining loop and its
collaborators (step, per-source accounting, held-out loss, checkpoint policy), run setup
("auto" DeepSpeed values), schedules, metrics, resharding."""
