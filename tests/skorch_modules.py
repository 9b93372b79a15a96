"""Torch modules for the skorch tests (importable, so that fitted nets pickle)."""

import torch


class LazyMLP(torch.nn.Module):
    """One tanh hidden layer that adapts to the number of features (LazyLinear).

    ``output``: "softmax" (probabilities, for NLLLoss), "logits" (CrossEntropyLoss,
    MSELoss) or "squeeze" (one logit per sample, for NeuralNetBinaryClassifier).
    """

    def __init__(self, n_out=3, hidden=8, output="softmax", dtype=torch.float32):
        super().__init__()
        self.hidden = torch.nn.LazyLinear(hidden, dtype=dtype)
        self.out = torch.nn.Linear(hidden, n_out, dtype=dtype)
        self.output = output

    def forward(self, X):
        z = self.out(torch.tanh(self.hidden(X)))
        if self.output == "softmax":
            return torch.softmax(z, dim=-1)
        if self.output == "squeeze":
            return z[:, 0]
        return z
