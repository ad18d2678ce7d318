"""Networks and their parts shared by the pipelines: the sparse backbone, CLIP, prompts, LoRA, Point-E, losses."""
