"""Runtime data: Megatron indexed shards, packed GPT samples, blended mixtures."""
