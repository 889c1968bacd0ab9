"""Convolutional VAE for 16x16 digits; its decoder is the exported generator."""

import torch
import torch.nn as nn


class VAEDecoder(nn.Module):
    """latent [N, latent] -> image [N, 1, 16, 16] in [0, 1]."""

    def __init__(self, latent: int = 16, width: int = 32):
        super().__init__()
        self.width = width
        self.fc = nn.Linear(latent, width * 2 * 4 * 4)
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1),  # 8x8
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),  # 16x16
            nn.Sigmoid(),
        )

    def forward(self, z):
        return self.net(self.fc(z).reshape(-1, self.width * 2, 4, 4))


class VAEEncoder(nn.Module):
    def __init__(self, latent: int = 16, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * 2 * 4 * 4, 2 * latent),
        )

    def forward(self, x):
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


class VAE(nn.Module):
    def __init__(self, latent: int = 16, width: int = 32):
        super().__init__()
        self.encoder = VAEEncoder(latent, width)
        self.decoder = VAEDecoder(latent, width)

    def forward(self, x):
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar
