"""Training tools: data generation and fitting of Prompt Diffusion models."""
