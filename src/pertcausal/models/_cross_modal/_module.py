"""The maths of the cross-modal autoencoder: encoders and decoders per modality, losses (torch only)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(n_in: int, n_out: int, n_hidden: int, n_layers: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(n_layers):
        layers += [nn.Linear(d, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU(), nn.Dropout(dropout)]
        d = n_hidden
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


def mmd(a: torch.Tensor, b: torch.Tensor, scales: tuple[float, ...] = (0.1, 1.0, 10.0)) -> torch.Tensor:
    """Maximum mean discrepancy between two samples with a sum of Gaussian kernels (biased estimate)."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        return a.new_zeros(())
    x = torch.cat([a, b])
    d2 = torch.cdist(x, x).pow(2)
    dim = a.shape[1]
    k = sum(torch.exp(-d2 / (2.0 * s * dim)) for s in scales)
    n = a.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


class CrossModalModule(nn.Module):
    """One encoder and one decoder per modality around a shared latent space.

    Parameters
    ----------
    n_features
        Features of each modality (``{"rna": 2000, "adt": 49}``).
    likelihoods
        ``"nb"`` (counts, with the observed library size) or ``"gaussian"`` per modality.
    n_latent, n_hidden, n_layers, dropout
        Sizes of the latent space and of the encoder/decoder MLPs; ``dropout`` applies to the encoders.
    n_covariate_categories
        Categories of each categorical covariate, fed one-hot to every decoder (as scvi-tools does).
    n_labels
        Classes of the anchoring labels (0: none); a linear classifier on the latent anchors them.
    alignment
        ``"mmd"`` or ``"adversarial"`` distribution alignment between the modalities' embeddings.
    """

    def __init__(
        self,
        n_features: dict[str, int],
        likelihoods: dict[str, str],
        *,
        n_latent: int = 20,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
        n_covariate_categories: tuple[int, ...] = (),
        n_labels: int = 0,
        alignment: str = "mmd",
        feature_means: dict[str, torch.Tensor] | None = None,
        feature_sds: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.mods = list(n_features)
        self.likelihoods = dict(likelihoods)
        self.n_latent = n_latent
        self.n_cov = int(sum(n_covariate_categories))
        self.n_covariate_categories = tuple(n_covariate_categories)
        self.alignment = alignment
        self.encoders = nn.ModuleDict(
            {m: _mlp(n, 2 * n_latent, n_hidden, n_layers, dropout) for m, n in n_features.items()}
        )
        self.decoders = nn.ModuleDict(
            # no dropout in the decoders, as in scvi-tools' decoders: dropout regularises the encoders
            {m: _mlp(n_latent + self.n_cov, n, n_hidden, n_layers, 0.0) for m, n in n_features.items()}
        )
        # NB: inverse dispersion per feature; Gaussian: log variance per feature
        self.log_theta = nn.ParameterDict({m: nn.Parameter(torch.zeros(n)) for m, n in n_features.items()})
        for m, n in n_features.items():
            mean = torch.zeros(n) if feature_means is None else feature_means[m]
            sd = torch.ones(n) if feature_sds is None else feature_sds[m]
            self.register_buffer(f"mean_{m}", mean.float())
            self.register_buffer(f"sd_{m}", sd.float())
        self.classifier = nn.Linear(n_latent, n_labels) if n_labels else None
        self.discriminator = _mlp(n_latent, len(self.mods), n_hidden, 2, 0.0) if alignment == "adversarial" else None

    # -- pieces ------------------------------------------------------------------------------------
    def _input(self, mod: str, x: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        if self.likelihoods[mod] == "nb":
            return torch.log1p(x / library.clamp(min=1.0)[:, None] * 1e4)
        return (x - getattr(self, f"mean_{mod}")) / getattr(self, f"sd_{mod}")

    def encode(self, mod: str, x: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of q(z | x) from modality ``mod``."""
        h = self.encoders[mod](self._input(mod, x, library))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    def _covariates(self, cov: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        if not self.n_cov:
            return None
        parts = [F.one_hot(cov[:, j].long(), k).float() for j, k in enumerate(self.n_covariate_categories)]
        return torch.cat(parts, dim=1).to(device)

    def decode(self, mod: str, z: torch.Tensor, cov: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output: log proportions (NB) or standardised means (Gaussian)."""
        c = self._covariates(cov, z.shape[0], z.device)
        h = self.decoders[mod](z if c is None else torch.cat([z, c], dim=1))
        return F.log_softmax(h, dim=-1) if self.likelihoods[mod] == "nb" else h

    def log_likelihood(
        self, mod: str, out: torch.Tensor, x: torch.Tensor, library: torch.Tensor, x_term: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-cell log-likelihood of ``x`` under the decoder output ``out``.

        ``x_term`` is ``lgamma(x + 1).sum(-1)`` when already computed (it does not depend on the parameters).
        """
        if self.likelihoods[mod] == "nb":
            # the negative binomial log-pmf with mean mu = exp(out) x library, summed over features, with
            # log mu = out + log library and the terms in theta alone summed once instead of per cell
            log_theta = self.log_theta[mod]
            theta = log_theta.exp()
            log_lib = torch.log(library.clamp(min=1.0))[:, None]
            log_theta_mu = torch.logaddexp(log_theta, out + log_lib)
            per_cell = (
                (x * (out + log_lib)).sum(-1)
                - ((theta + x) * log_theta_mu).sum(-1)
                + torch.lgamma(x + theta).sum(-1)
                - (torch.lgamma(x + 1).sum(-1) if x_term is None else x_term)
            )
            return per_cell + (theta * log_theta - torch.lgamma(theta)).sum()
        xs = (x - getattr(self, f"mean_{mod}")) / getattr(self, f"sd_{mod}")
        logvar = self.log_theta[mod]
        return (-0.5 * ((xs - out) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(-1)

    def predict(self, mod: str, out: torch.Tensor) -> torch.Tensor:
        """Decoder output on the modality's normalised scale: log1p(1e4 x proportion) or the mean."""
        if self.likelihoods[mod] == "nb":
            return torch.log1p(out.exp() * 1e4)
        return out * getattr(self, f"sd_{mod}") + getattr(self, f"mean_{mod}")

    # -- the loss --------------------------------------------------------------------------------
    def loss(
        self,
        batch: dict[str, Any],
        *,
        kl_weight: float = 1.0,
        align_weight: float = 1.0,
        cross_weight: float = 1.0,
        dist_weight: float = 1.0,
        label_weight: float = 1.0,
        adversary_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of a minibatch (sums over cells divided by the number of cells)."""
        cov = batch.get("cov")
        n_cells = batch["n_cells"]
        mus: dict[str, torch.Tensor] = {}
        zs: dict[str, torch.Tensor] = {}
        x_terms: dict[str, torch.Tensor] = {}
        recon = kl = cross = align = dist = label = adversary = torch.zeros((), device=self._device())
        for m in self.mods:
            present = batch[m]["present"]
            if present.sum() == 0:
                continue
            x, lib = batch[m]["x"], batch[m]["library"]
            mu, logvar = self.encode(m, x, lib)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
            mus[m], zs[m] = mu, z
            c = cov[present] if cov is not None else None
            if self.likelihoods[m] == "nb":
                x_terms[m] = torch.lgamma(x + 1).sum(-1)
            recon = recon - self.log_likelihood(m, self.decode(m, z, c), x, lib, x_terms.get(m)).sum()
            kl = kl + (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum()
        # paired cells: cross-reconstruction and latent alignment
        for i, a in enumerate(self.mods):
            for b in self.mods[i + 1 :]:
                if a not in mus or b not in mus:
                    continue
                both = batch[a]["present"] & batch[b]["present"]
                if both.sum() == 0:
                    continue
                ia = batch[a]["pos"][both]  # rows of a's tensors for the cells measured in both
                ib = batch[b]["pos"][both]
                c = cov[both] if cov is not None else None
                if cross_weight:
                    out_b = self.decode(b, zs[a][ia], c)
                    out_a = self.decode(a, zs[b][ib], c)
                    xb, xa = batch[b]["x"][ib], batch[a]["x"][ia]
                    tb = x_terms[b][ib] if b in x_terms else None
                    ta = x_terms[a][ia] if a in x_terms else None
                    cross = cross - self.log_likelihood(b, out_b, xb, batch[b]["library"][ib], tb).sum()
                    cross = cross - self.log_likelihood(a, out_a, xa, batch[a]["library"][ia], ta).sum()
                align = align + (mus[a][ia] - mus[b][ib]).pow(2).sum()
        # distribution alignment of the modalities' embeddings (what aligns unpaired cells)
        if dist_weight and len(mus) > 1:
            if self.discriminator is None:
                keys = list(mus)
                labels = batch.get("labels")
                for i, a in enumerate(keys):
                    for b in keys[i + 1 :]:
                        if labels is None:
                            dist = dist + mmd(mus[a], mus[b]) * n_cells
                            continue
                        # anchored: align each label's cells across the modalities (class-conditional MMD)
                        ya, yb = labels[batch[a]["present"]], labels[batch[b]["present"]]
                        for y in torch.unique(torch.cat([ya, yb])):
                            if y < 0:
                                continue
                            sa, sb = mus[a][ya == y], mus[b][yb == y]
                            dist = dist + mmd(sa, sb) * (len(sa) + len(sb)) / 2
            else:
                logits = [self.discriminator(_GradReverse.apply(mus[m], adversary_weight)) for m in mus]
                targets = [torch.full((len(mu),), self.mods.index(m), device=mu.device) for m, mu in mus.items()]
                adversary = F.cross_entropy(torch.cat(logits), torch.cat(targets), reduction="sum")
        if self.classifier is not None and "labels" in batch:
            for m, mu in mus.items():
                y = batch["labels"][batch[m]["present"]]
                known = y >= 0
                if known.any():
                    label = label + F.cross_entropy(self.classifier(mu[known]), y[known].long(), reduction="sum")
        total = (
            recon
            + kl_weight * kl
            + cross_weight * cross
            + align_weight * align
            + dist_weight * dist
            + label_weight * label
            + dist_weight * adversary
        ) / n_cells
        return {
            "loss": total,
            "reconstruction": recon / n_cells,
            "kl": kl / n_cells,
            "cross_reconstruction": cross / n_cells,
            "alignment": align / n_cells,
            "distribution": dist / n_cells,
            "labels": label / n_cells,
            "adversary": adversary / n_cells,
        }

    def _device(self) -> torch.device:
        return next(self.parameters()).device
