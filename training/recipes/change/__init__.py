"""The change recipe: DeltaVLM (difference module, instruction-aware Q-Former, frozen LLM) on the RSA model."""
