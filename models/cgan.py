"""Class-conditional generator (and discriminator) for 16x16 digits."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConditionalGenerator(nn.Module):
    """(latent [N, nz], label [N] int64) -> image [N, 1, 16, 16] in [-1, 1] of that class."""

    def __init__(self, nz: int = 100, ngf: int = 32, classes: int = 10, embed: int = 32):
        super().__init__()
        self.ngf = ngf
        self.embed = nn.Embedding(classes, embed)
        self.fc = nn.Sequential(nn.Linear(nz + embed, ngf * 4 * 4 * 4, bias=False), nn.BatchNorm1d(ngf * 4 * 4 * 4), nn.ReLU(True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),  # 8x8
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),  # 16x16
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.Conv2d(ngf, 1, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, z, label):
        h = self.fc(torch.cat([z, self.embed(label)], dim=1))
        return self.net(h.reshape(-1, self.ngf * 4, 4, 4))


class ConditionalDiscriminator(nn.Module):
    """(image [N, 1, 16, 16], label [N]) -> logit [N]: the DCGAN discriminator with the label as
    one-hot input planes. On these digits a projection discriminator (tried with BatchNorm,
    spectral norm or a minibatch-std feature) let the generator draw one image per class."""

    def __init__(self, ndf: int = 32, classes: int = 10):
        super().__init__()
        self.classes = classes
        self.net = nn.Sequential(
            nn.Conv2d(1 + classes, ndf, 4, 2, 1),  # 8x8
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),  # 4x4
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 4, 1, 0),  # 1x1
        )

    def forward(self, x, label):
        planes = F.one_hot(label, self.classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.net(torch.cat([x, planes], dim=1)).flatten()
