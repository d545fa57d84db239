"""DialoGPT on top of inference: MMI reranking of sampled responses with a backward model."""
