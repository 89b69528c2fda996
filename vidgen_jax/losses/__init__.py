"""Losses shared by model families (GAN terms of tokenizer training)."""
