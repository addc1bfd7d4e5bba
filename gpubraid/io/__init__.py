"""Files: model files (safetensors + network spec) and checkpoints."""
