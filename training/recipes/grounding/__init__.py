"""The grounding recipe: SkyEyeGPT/GeoChat-style instruction tuning of the RSA model (LoRA, location tokens)."""
