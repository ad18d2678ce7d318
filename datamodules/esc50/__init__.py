"""ESC-50 (environmental sound classification): its metadata, clips and the audio DataModule."""
from datamodules.esc50.datamodule import ESC50Clips, ESC50DataModule
from datamodules.esc50.meta import ESC50_CATEGORIES, ESC50Clip, ESC50FormatError, read_meta

__all__ = ["ESC50_CATEGORIES", "ESC50Clip", "ESC50Clips", "ESC50DataModule", "ESC50FormatError", "read_meta"]
