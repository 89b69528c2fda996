"""Losses shared by model families: GAN terms and the frozen VGG16 perceptual loss of tokenizer training."""
