"""The clip recipe: GeoRSCLIP/SkyCLIP-style continued contrastive training of a CLIP (train.py)."""
