"""Recurrent VAE over digit rows (8 steps of 8 pixels); its decoder is the exported generator."""

import torch
import torch.nn as nn

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentDecoder(nn.Module):
    """latent [N, latent] -> sequence [N, steps, features] in [0, 1].

    The latent sets the initial hidden state and is fed at every step, so the
    whole sequence comes from one recurrent layer (an ONNX GRU/LSTM node).
    """

    def __init__(self, latent: int = 16, hidden: int = 64, features: int = 8, steps: int = 8, cell: str = "gru"):
        super().__init__()
        self.steps, self.cell = steps, cell
        self.init = nn.Linear(latent, hidden)
        self.rnn = CELLS[cell](latent, hidden, batch_first=True)
        self.out = nn.Linear(hidden, features)

    def forward(self, z):
        h0 = torch.tanh(self.init(z)).unsqueeze(0)
        state = (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0
        x = z.unsqueeze(1).expand(-1, self.steps, -1)
        y, _ = self.rnn(x, state)
        return torch.sigmoid(self.out(y))


class RecurrentEncoder(nn.Module):
    def __init__(self, latent: int = 16, hidden: int = 64, features: int = 8, cell: str = "gru"):
        super().__init__()
        self.rnn = CELLS[cell](features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2 * latent)

    def forward(self, x):
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state
        mu, logvar = self.head(h[-1]).chunk(2, dim=1)
        return mu, logvar


class RecurrentVAE(nn.Module):
    def __init__(self, latent: int = 16, hidden: int = 64, features: int = 8, steps: int = 8, cell: str = "gru"):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}")
        self.encoder = RecurrentEncoder(latent, hidden, features, cell)
        self.decoder = RecurrentDecoder(latent, hidden, features, steps, cell)

    def forward(self, x):
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar
