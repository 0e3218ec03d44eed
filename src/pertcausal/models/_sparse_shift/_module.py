"""The torch module of the sparse mechanism shift VAE (sVAE+, Lopez et al. CLeaR 2023)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import DecoderSCVI, Encoder
from torch import nn
from torch.distributions import Normal, kl_divergence

PRIORS = ("svae+", "svae", "ivae", "vae")
SPARSITY_UNITS = ("cell", "dataset")


class SparseShiftModule(BaseModuleClass):
    """scVI's encoder/decoder with a per-perturbation prior p(z | a) = N(m_a * mu_a, I).

    ``m_a`` is a binary target mask learned through a relaxed Bernoulli (Gumbel-sigmoid) with a
    straight-through estimator; the control regime has no shift. ``prior`` chooses the model:

    - ``"svae+"``: a Beta(1, b) prior on the mask probabilities (the sVAE+ global term); with
      ``sparsity_unit="dataset"``, b = ``sparsity``; with ``"cell"``, each cell pays ``sparsity`` x
      -log(1 - p) for every mask entry of its perturbation, i.e. b = 1 + ``sparsity`` x (cells of a), so
      the prior keeps its weight against the likelihood, which grows with the cells of a perturbation;
    - ``"svae"``: a penalty ``sparsity`` x mean mask probability (Lachapelle et al.'s penalised sVAE);
    - ``"ivae"``: every latent shifted (mask all ones), i.e. a conditional-prior iVAE;
    - ``"vae"``: N(0, I) for every cell.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        *,
        control_index: int,
        n_batch: int = 0,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        prior: str = "svae+",
        sparsity: float = 10.0,
        mask_init: float = 3.0,
        temperature: float = 1.0,
        sparsity_unit: str = "dataset",
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if sparsity_unit not in SPARSITY_UNITS:
            raise ValueError(f"sparsity_unit must be one of {SPARSITY_UNITS}, got {sparsity_unit!r}")
        self.n_input, self.n_labels, self.n_batch, self.n_latent = n_input, n_labels, n_batch, n_latent
        self.prior, self.sparsity, self.mask_init, self.temperature = prior, float(sparsity), mask_init, temperature
        self.sparsity_unit = sparsity_unit
        self.z_encoder = Encoder(
            n_input, n_latent, n_layers=n_layers, n_hidden=n_hidden, dropout_rate=dropout_rate, return_dist=True
        )
        self.decoder = DecoderSCVI(
            n_latent, n_input, n_cat_list=[n_batch], n_layers=n_layers, n_hidden=n_hidden, use_batch_norm=True
        )
        self.px_r = nn.Parameter(torch.randn(n_input))
        self.shift = nn.Parameter(torch.zeros(n_labels, n_latent))
        self.mask_logit = nn.Parameter(torch.full((n_labels, n_latent), float(mask_init)))
        intervened = torch.ones(n_labels)
        intervened[control_index] = 0.0
        self.register_buffer("intervened", intervened)
        self.frozen_networks = False

    # -- the held-out protocol trains the prior alone: encoder and decoder stay in eval mode --------
    def train(self, mode: bool = True) -> SparseShiftModule:
        super().train(mode)
        if self.frozen_networks:
            self.z_encoder.eval()
            self.decoder.eval()
        return self

    def target_probability(self) -> torch.Tensor:
        """P(latent j is a target of perturbation a): labels x latents, 0 for the control."""
        if self.prior == "vae":
            return torch.zeros_like(self.mask_logit)
        if self.prior == "ivae":
            return self.intervened[:, None].expand_as(self.mask_logit).clone()
        return torch.sigmoid(self.mask_logit) * self.intervened[:, None]

    def _mask(self, labels: torch.Tensor) -> torch.Tensor:
        logits = self.mask_logit[labels]
        if self.prior == "ivae":
            return torch.ones_like(logits)
        if not self.training:  # thresholded: a latent is a target when its probability is above 0.5
            return (logits > 0).to(logits.dtype)
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
        hard = (soft > 0.5).to(soft.dtype)
        return hard + soft - soft.detach()  # straight-through

    def prior_mean(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.reshape(-1).long()
        if self.prior == "vae":
            return torch.zeros(labels.shape[0], self.n_latent, device=self.shift.device)
        return self._mask(labels) * self.shift[labels] * self.intervened[labels][:, None]

    # -- BaseModuleClass ---------------------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return {
            "z": inference_outputs["z"],
            "library": inference_outputs["library"],
            "batch_index": batch if batch is not None else torch.zeros_like(inference_outputs["library"]),
            "labels": tensors[REGISTRY_KEYS.LABELS_KEY],
        }

    @auto_move_data
    def inference(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, Any]:
        library = torch.log(x.sum(1, keepdim=True).clamp(min=1.0))
        qz, z = self.z_encoder(torch.log1p(x))
        if n_samples > 1:
            z = qz.rsample((n_samples,))
            library = library.unsqueeze(0).expand(n_samples, *library.shape)
        return {"qz": qz, "z": z, "library": library}

    @auto_move_data
    def generative(
        self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, Any]:
        px_scale, _, px_rate, _ = self.decoder("gene", z, library, batch_index)
        pz = Normal(self.prior_mean(labels), torch.ones(1, device=z.device))
        return {"px": NegativeBinomial(mu=px_rate, theta=torch.exp(self.px_r)), "px_scale": px_scale, "pz": pz}

    def cell_penalty(self, labels: torch.Tensor) -> torch.Tensor:
        """Per cell: ``sparsity`` x sum_j -log(1 - p_aj) over its perturbation's mask (sVAE+, unit "cell")."""
        labels = labels.reshape(-1).long()
        log_off = F.logsigmoid(-self.mask_logit[labels]) * self.intervened[labels][:, None]
        return -self.sparsity * log_off.sum(-1)

    def global_penalty(self) -> torch.Tensor:
        """Minus the log prior of the mask probabilities (sVAE+) or the sparsity penalty (sVAE)."""
        rows = self.intervened[:, None]
        if self.prior == "svae+":
            # -log Beta(p; 1, b) = -(b - 1) log(1 - p) + const; log(1 - p) = logsigmoid(-logit)
            return -(self.sparsity - 1.0) * (F.logsigmoid(-self.mask_logit) * rows).sum()
        if self.prior == "svae":
            return self.sparsity * (torch.sigmoid(self.mask_logit) * rows).sum() / (rows.sum() * self.n_latent)
        return torch.zeros((), device=self.mask_logit.device)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, Any],
        generative_outputs: dict[str, Any],
        kl_weight: float = 1.0,
        n_obs: int = 1,
        use_global: bool = True,
    ) -> LossOutput:
        x = tensors[REGISTRY_KEYS.X_KEY]
        reconst = -generative_outputs["px"].log_prob(x).sum(-1)
        kl_z = kl_divergence(inference_outputs["qz"], generative_outputs["pz"]).sum(-1)
        loss = torch.mean(reconst + kl_weight * kl_z)
        if self.prior == "svae+" and self.sparsity_unit == "cell":
            # summed over the cells, the joint has a Beta(1, 1 + sparsity x n_a) prior per mask entry of a
            penalty = self.cell_penalty(tensors[REGISTRY_KEYS.LABELS_KEY])
            kl_global = penalty.sum() if use_global else torch.zeros((), device=x.device)
            if use_global:
                loss = loss + kl_weight * penalty.mean()
            return LossOutput(loss=loss, reconstruction_loss=reconst, kl_local={"kl_z": kl_z}, kl_global=kl_global)
        kl_global = self.global_penalty() if use_global else torch.zeros((), device=x.device)
        if self.prior == "svae+":  # a term of the joint over all cells: per cell, it weighs 1 / n_obs
            loss = loss + kl_weight * kl_global / max(n_obs, 1)
        elif self.prior == "svae":  # the reference adds the penalty to the per-cell loss unscaled
            loss = loss + kl_global
        return LossOutput(loss=loss, reconstruction_loss=reconst, kl_local={"kl_z": kl_z}, kl_global=kl_global)

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        _, gen = self.forward(tensors, inference_kwargs={"n_samples": n_samples}, compute_loss=False)
        return gen["px"].sample().cpu()

    @torch.inference_mode()
    @auto_move_data
    def marginal_ll(
        self, tensors: dict[str, torch.Tensor], n_mc_samples: int = 100, return_mean: bool = False, **kwargs: Any
    ) -> torch.Tensor | float:
        """Importance-weighted bound on log p(x | a) per cell, with ``n_mc_samples`` posterior samples."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        inf = self.inference(x)
        qz, library = inf["qz"], inf["library"]
        labels = tensors[REGISTRY_KEYS.LABELS_KEY]
        batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        batch = batch if batch is not None else torch.zeros_like(library)
        pz = Normal(self.prior_mean(labels), torch.ones(1, device=x.device))
        chunks = []
        done = 0
        while done < n_mc_samples:  # a few samples at a time to bound memory
            k = min(32, n_mc_samples - done)
            z = qz.sample((k,))
            _, _, px_rate, _ = self.decoder("gene", z, library.expand(k, *library.shape), batch)
            log_px = NegativeBinomial(mu=px_rate, theta=torch.exp(self.px_r)).log_prob(x).sum(-1)
            chunks.append(log_px + pz.log_prob(z).sum(-1) - qz.log_prob(z).sum(-1))
            done += k
        ll = torch.logsumexp(torch.cat(chunks), dim=0) - math.log(n_mc_samples)
        return float(ll.mean()) if return_mean else ll.cpu()
