"""The segment recipe: GeoPix ([SEG] tokens, mask decoder with class-wise memory, LoRA) on the RSA model."""
