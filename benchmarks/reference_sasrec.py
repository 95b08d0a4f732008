"""The issue's yardstick: a plain SASRec-CE in a page of PyTorch, run on OUR processed split.

It exists so that ``sasrec-ce`` can be compared with an independent, minimal implementation on
exactly the same data and metric code (rather than with numbers measured on another split).
Kang & McAuley's architecture (residual on the normed query, ReLU feed-forward, right-aligned
positions, the last ``max_len`` items per user, xavier init; no dropout on attention weights,
which costs ~5x on CPU), trained with full softmax
cross-entropy at every position, Adam at a constant rate, early stopping on validation NDCG@10.
Deliberately a bare loop: it is a reference, not part of the product.

``python -m benchmarks.reference_sasrec ml-100k [--epochs 200] [--seed 42]``
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.modeling.evaluation_data import split_examples
from recsys.modeling.metrics import hit_rate_at_k, ndcg_at_k
from recsys.modeling.scoring import rank_examples
from recsys.processed import load_processed, train_pieces


class PlainSASRec(nn.Module):
    def __init__(self, n_items: int, max_len: int, d: int, n_blocks: int, dropout: float) -> None:
        super().__init__()
        self.config = argparse.Namespace(max_len=max_len, use_user=False)
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(max_len, d)
        self.dropout = nn.Dropout(dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_blocks))
        self.attns = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(n_blocks))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_blocks))
        self.ffns = nn.ModuleList(
            nn.Sequential(
                nn.Linear(d, d),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(d, d),
                nn.Dropout(dropout),
            )
            for _ in range(n_blocks)
        )
        self.last_norm = nn.LayerNorm(d)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_normal_(param)  # as the common PyTorch SASRec port does

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        x = self.items(seq) * self.items.embedding_dim**0.5
        x = x + self.positions(torch.arange(length, device=seq.device))  # right-aligned
        x = self.dropout(x) * (seq > 0)[..., None]
        for norm, attn, ffn_norm, ffn in zip(
            self.attn_norms, self.attns, self.ffn_norms, self.ffns
        ):
            q = norm(x)
            wq, wk, wv = attn.weight.chunk(3)
            bq, bk, bv = attn.bias.chunk(3)
            mixed = F.scaled_dot_product_attention(
                F.linear(q, wq, bq),
                F.linear(x, wk, bk),
                F.linear(x, wv, bv),
                is_causal=True,
            )
            x = q + mixed
            x = ffn_norm(x)
            x = (x + ffn(x)) * (seq > 0)[..., None]
        return self.last_norm(x)

    @torch.no_grad()
    def score(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.shape[1] < self.config.max_len:
            seq = F.pad(seq, (self.config.max_len - seq.shape[1], 0))
        scores = self.hidden(seq)[:, -1] @ self.items.weight.T
        scores[:, 0] = float("-inf")
        return scores


def test_style_metrics(model: nn.Module, data, split: str) -> dict[str, float]:
    ranked = rank_examples(model, split_examples(data, split), data.n_items, device="cpu")
    return {
        f"{split}_ndcg@10": ndcg_at_k(ranked.ranks, 10).mean().item(),
        f"{split}_hr@10": hit_rate_at_k(ranked.ranks, 10).mean().item(),
    }


def main(dataset: str, epochs: int, patience: int, seed: int = 42) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    max_len, batch_size = 200, 128
    data = load_processed(dataset)
    windows = train_pieces(data.events).padded(max_len + 1)
    windows = torch.from_numpy(windows)
    model = PlainSASRec(data.n_items, max_len, d=64, n_blocks=2, dropout=0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    best, best_state, best_epoch, waited, seconds = -1.0, None, -1, 0, []
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        for rows in np.array_split(rng.permutation(len(windows)), len(windows) // batch_size):
            batch = windows[rows]
            inputs, targets = batch[:, :-1], batch[:, 1:]
            keep = (targets > 0) & (inputs > 0)
            logits = model.hidden(inputs)[keep] @ model.items.weight.T
            loss = F.cross_entropy(logits, targets[keep])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        valid = test_style_metrics(model, data, "valid")["valid_ndcg@10"]
        seconds.append(time.perf_counter() - start)
        print(f"epoch {epoch}: loss {loss.item():.4f} val_ndcg@10 {valid:.4f}", flush=True)
        if valid > best:
            best, best_state, best_epoch, waited = (
                valid,
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return {
        "dataset": dataset,
        "best_epoch": best_epoch,
        "best_val_ndcg@10": best,
        **test_style_metrics(model, data, "test"),
        "seconds_per_epoch": float(np.mean(seconds)),
        "time_to_best_s": float(np.sum(seconds[: best_epoch + 1])),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(json.dumps(main(args.dataset, args.epochs, args.patience, args.seed), indent=1))
