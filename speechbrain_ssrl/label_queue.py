"""Per-utterance pseudo-label queues with a majority vote (SSRL stage 2).

Every training utterance ``n`` owns a FIFO ``Q_n`` of its last ``L`` pseudo labels. At the start
of stage 2 each queue holds ``seed_copies`` (default ``L // 2``) copies of the initial k-means
label ``y0_n``, so that after ``L // 2 + 1`` pushes of teacher labels the queue is full (for odd
``L``; in general after ``L - seed_copies`` pushes). At the end of an epoch the teacher's labels
are pushed and the new label is the mode of the queue (SSRL's label queue, as in the authors' release).

Storage is one ``(N, L)`` int64 tensor, oldest entry in column 0, newest in column ``L - 1``,
``-1`` marking empty slots (labels must be ``>= 0``). Everything is vectorised over utterances;
only the queue length ``L`` is looped over, so ``N`` = 1.1 M queues vote in well under a second.

Tie rule of the vote (``tie``), among the labels sharing the highest count:

* ``"oldest"`` (default): the label whose *first* occurrence in the FIFO is the oldest wins,
  i.e. the tied label that entered the queue earliest (the seeded initial label wins its ties).
* ``"newest"``: the label whose *last* occurrence is the newest wins, i.e. the tied label that
  was pushed most recently.

Examples (oldest → newest): ``[3, 7, 3, 7, 9]``: 3 and 7 tie with two votes; ``"oldest"`` gives 3
(first seen at position 0, before 7 at position 1), ``"newest"`` gives 7 (last seen at position 3,
after 3 at position 2). ``[3, 7, 7, 3, 9]``: both rules give 3. ``[9, 9, 9, 3, 7]``: 9 (no tie).

``length=1`` is the "without queue" ablation: the vote is the last pushed label.

The object is a SpeechBrain checkpoint recoverable (``state.StateRecoverable``); its state holds
tensors and plain Python values only (loadable with ``torch.load(weights_only=True)``). Under DDP
call ``push`` with the all-gathered records so that every rank holds identical queues.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from speechbrain_ssrl.state import StateRecoverable

__all__ = ["PseudoLabelQueue", "unique_last", "changed_fraction"]

_EMPTY = -1
_TIES = ("oldest", "newest")


def unique_last(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the last occurrence of every distinct value of a 1-D ``indices`` tensor.

    The result is sorted by the distinct values (``torch.unique`` order), so
    ``indices[unique_last(indices)]`` are the sorted unique indices and
    ``values[unique_last(indices)]`` the values recorded last for each of them. Used to make
    repeated indices in one update (e.g. ``DistributedSampler`` padding) well defined.
    """
    indices = torch.as_tensor(indices)
    if indices.dim() != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
    if indices.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=indices.device)
    uniq, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    positions = torch.arange(indices.numel(), device=indices.device)
    last = torch.full((uniq.numel(),), -1, dtype=torch.long, device=indices.device)
    return last.scatter_reduce_(0, inverse, positions, reduce="amax", include_self=True)


def changed_fraction(old: torch.Tensor, new: torch.Tensor) -> float:
    """Fraction of positions where two label tensors of the same shape differ (0.0 when empty)."""
    old, new = torch.as_tensor(old), torch.as_tensor(new)
    if old.shape != new.shape:
        raise ValueError(f"label tensors differ in shape: {tuple(old.shape)} vs {tuple(new.shape)}")
    if old.numel() == 0:
        return 0.0
    return float((old != new.to(old.device)).double().mean())


class PseudoLabelQueue(StateRecoverable):
    """FIFO of the last ``length`` pseudo labels of each of ``N`` utterances, with majority vote.

    Arguments
    ---------
    initial_labels : LongTensor (N,)
        Initial (k-means) label of every utterance, ``>= 0``. Also the answer of ``vote`` and
        ``current`` for a queue that holds nothing (only possible with ``seed_copies=0``).
    length : int
        Queue length ``L >= 1``. ``1`` = no queue (the vote is the last pushed label).
    seed_copies : int or None
        Copies of the initial label the queue starts with, ``0 <= seed_copies <= length``;
        ``None`` means ``length // 2``.
    tie : "oldest" or "newest"
        Tie rule of the vote, see the module docstring.
    """

    def __init__(
        self,
        initial_labels: torch.Tensor,
        length: int = 5,
        seed_copies: Optional[int] = None,
        tie: str = "oldest",
    ) -> None:
        initial = torch.as_tensor(initial_labels)
        if initial.dim() != 1:
            raise ValueError(f"initial_labels must be 1-D (N,), got shape {tuple(initial.shape)}")
        if initial.is_floating_point() or initial.dtype == torch.bool or initial.is_complex():
            raise TypeError(f"initial_labels must be an integer tensor, got {initial.dtype}")
        if initial.numel() and int(initial.min()) < 0:
            raise ValueError("initial_labels must be >= 0 (-1 marks empty queue slots)")
        length = int(length)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        seed_copies = length // 2 if seed_copies is None else int(seed_copies)
        if not 0 <= seed_copies <= length:
            raise ValueError(f"seed_copies must be in [0, {length}], got {seed_copies}")
        if tie not in _TIES:
            raise ValueError(f"tie must be one of {_TIES}, got {tie!r}")

        self.length: int = length
        self.seed_copies: int = seed_copies
        self.tie: str = tie
        self.n_pushes: int = 0
        self._initial: torch.Tensor = initial.to(torch.long).clone()
        self._buf: torch.Tensor = torch.full(
            (initial.numel(), length), _EMPTY, dtype=torch.long, device=initial.device
        )
        if seed_copies:
            self._buf[:, length - seed_copies :] = self._initial[:, None]

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self._buf.shape[0]

    @property
    def n(self) -> int:
        """Number of utterances ``N``."""
        return self._buf.shape[0]

    @property
    def device(self) -> torch.device:
        """Device holding the queues (that of ``initial_labels``; see ``to``)."""
        return self._buf.device

    @property
    def queues(self) -> torch.Tensor:
        """A copy of the ``(N, L)`` queue contents, oldest first, ``-1`` = empty slot."""
        return self._buf.clone()

    @property
    def initial(self) -> torch.Tensor:
        """A copy of the initial labels ``(N,)``."""
        return self._initial.clone()

    @property
    def fill(self) -> torch.Tensor:
        """Number of labels held by each queue, LongTensor ``(N,)`` in ``[0, L]``."""
        return (self._buf != _EMPTY).sum(dim=1)

    @property
    def current(self) -> torch.Tensor:
        """Newest label of each queue ``(N,)`` (the last pushed one; the seed / initial label if
        nothing was pushed yet)."""
        newest = self._buf[:, -1]
        return torch.where(newest != _EMPTY, newest, self._initial)

    def to(self, device: torch.device | str) -> "PseudoLabelQueue":
        """Move the queues to ``device`` (in place); returns ``self``."""
        self._buf = self._buf.to(device)
        self._initial = self._initial.to(device)
        return self

    # ------------------------------------------------------------------ updates
    def _check_indices(self, indices: torch.Tensor) -> torch.Tensor:
        indices = torch.as_tensor(indices, device=self.device)
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n):
            raise IndexError(
                f"utterance indices must be in [0, {self.n}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return indices

    def _check_labels(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.device)
        if labels.shape != indices.shape:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} must match indices shape {tuple(indices.shape)}"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        labels = labels.long()
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError("labels must be >= 0 (-1 marks empty queue slots)")
        return labels

    def _shifted(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Rows of ``indices`` as they would be after appending ``labels`` (oldest dropped)."""
        rows = self._buf[indices]
        return torch.cat([rows[:, 1:], labels[:, None]], dim=1)

    def push(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """Append one label to the queue of each given utterance (the oldest is dropped when full).

        If an index occurs several times, only its last occurrence is pushed (one label per
        utterance per call). Utterances not listed are unchanged.
        """
        indices = self._check_indices(indices)
        labels = self._check_labels(indices, labels)
        if indices.numel():
            keep = unique_last(indices)
            indices, labels = indices[keep], labels[keep]
            self._buf[indices] = self._shifted(indices, labels)
        self.n_pushes += 1

    # ------------------------------------------------------------------ votes
    def _vote_rows(
        self, rows: torch.Tensor, fallback: torch.Tensor, exclude: Optional[torch.Tensor]
    ) -> torch.Tensor:
        length = rows.shape[1]
        valid = rows != _EMPTY
        if exclude is not None:
            exclude = torch.as_tensor(exclude, device=rows.device)
            if exclude.dtype != torch.bool or exclude.dim() != 1:
                raise TypeError("exclude must be a 1-D bool mask over the label ids")
            if rows.numel() and int(rows.max()) >= exclude.numel():
                raise ValueError(
                    f"exclude mask has {exclude.numel()} entries but a queue holds label {int(rows.max())}"
                )
            valid &= ~exclude[rows.clamp_min(0)]
        counts = torch.empty_like(rows)
        for j in range(length):
            counts[:, j] = ((rows == rows[:, j : j + 1]) & valid).sum(dim=1)
        counts.masked_fill_(~valid, -1)
        position = torch.arange(length, device=rows.device)
        # among positions with the highest count: the earliest one ("oldest" = label whose first
        # occurrence is oldest) or the latest one ("newest" = label whose last occurrence is newest)
        tiebreak = (length - 1 - position) if self.tie == "oldest" else position
        winner = (counts * (length + 1) + tiebreak).argmax(dim=1, keepdim=True)
        out = rows.gather(1, winner).squeeze(1)
        if exclude is None:
            return torch.where(valid.any(dim=1), out, fallback)
        out = torch.where(valid.any(dim=1), out, _EMPTY)
        # a queue that never held a label falls back to its initial label, unless excluded
        never = (rows == _EMPTY).all(dim=1)
        fb_ok = never & ~exclude[fallback]
        return torch.where(fb_ok, fallback, out)

    def vote(
        self, indices: Optional[torch.Tensor] = None, exclude: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Majority label of each queue (of all ``N``, or of ``indices`` in that order).

        ``exclude`` (optional bool mask over label ids, e.g. the pruned clusters) ignores those
        labels in the count, so a removed cluster cannot come back through an old queue entry;
        a queue holding only excluded labels returns ``-1`` (the caller decides what to do).
        An empty queue (``seed_copies=0``, nothing pushed) returns its initial label.
        """
        if indices is None:
            return self._vote_rows(self._buf, self._initial, exclude)
        indices = self._check_indices(indices)
        return self._vote_rows(self._buf[indices], self._initial[indices], exclude)

    def peek_vote(
        self, indices: torch.Tensor, labels: torch.Tensor, exclude: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The vote each queue would give after pushing ``labels``, without changing any queue.

        For the teacher's per-batch target ``mode(Q_n + [ŷ_n])`` in the label-update phase
        (the queue as it will be at the end of the epoch, oldest entry dropped when full).
        Repeated indices are evaluated independently.
        """
        indices = self._check_indices(indices)
        labels = self._check_labels(indices, labels)
        return self._vote_rows(self._shifted(indices, labels), self._initial[indices], exclude)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Tensors (on CPU) and plain Python values only."""
        return {
            "queues": self._buf.detach().cpu().clone(),
            "initial": self._initial.detach().cpu().clone(),
            "length": self.length,
            "seed_copies": self.seed_copies,
            "tie": self.tie,
            "n_pushes": self.n_pushes,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a ``state_dict``; the number of utterances and the queue length must match."""
        queues = torch.as_tensor(state["queues"])
        if tuple(queues.shape) != tuple(self._buf.shape):
            raise ValueError(
                f"checkpointed queues have shape {tuple(queues.shape)}, this object "
                f"{tuple(self._buf.shape)} (N, length): was the training set or the queue length changed?"
            )
        if state["tie"] not in _TIES:
            raise ValueError(f"bad tie rule in state: {state['tie']!r}")
        self._buf = queues.to(self.device, torch.long).clone()
        self._initial = torch.as_tensor(state["initial"]).to(self.device, torch.long).clone()
        self.seed_copies = int(state["seed_copies"])
        self.tie = str(state["tie"])
        self.n_pushes = int(state["n_pushes"])


    def __repr__(self) -> str:
        return (
            f"PseudoLabelQueue(n={self.n}, length={self.length}, seed_copies={self.seed_copies}, "
            f"tie={self.tie!r}, n_pushes={self.n_pushes})"
        )
