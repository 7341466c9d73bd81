"""Training loops (DAMSM pretraining; the GAN follows) and what they share."""
