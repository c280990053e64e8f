"""Model files: PyTorch checkpoints read without torch (`torch_pickle`), our safetensors format (`native`).

Kept import-free so that `import rvc_mlx.checkpoints.torch_pickle` pulls in neither MLX nor torch.
"""
