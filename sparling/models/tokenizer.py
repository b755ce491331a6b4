"""Token strings <-> ids for the output sequences, with the special tokens the decoder needs.

Ids 0, 1, 2 are PAD, BOS and EOS in every vocabulary, so the downstream model can
know them without holding a tokenizer; the domain's tokens follow in the order the
domain lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


class Tokenizer:
    """Maps a domain's token strings to ids and back.

    >>> tok = Tokenizer(["1", "2", "3"])
    >>> tok.encode(["3", "1"])
    [1, 5, 3, 2]
    >>> tok.decode([1, 5, 3, 2, 0, 0])
    ['3', '1']
    """

    def __init__(self, vocabulary: Sequence[str]) -> None:
        vocabulary = list(vocabulary)
        clash = sorted(set(vocabulary) & set(SPECIAL_TOKENS))
        if clash:
            raise ValueError(f"vocabulary must not contain the special tokens {clash}")
        if len(set(vocabulary)) != len(vocabulary):
            dupes = sorted({t for t in vocabulary if vocabulary.count(t) > 1})
            raise ValueError(f"vocabulary has duplicate tokens {dupes}")
        self.vocabulary: list[str] = vocabulary
        self.tokens: list[str] = [*SPECIAL_TOKENS, *vocabulary]
        self._ids: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        """Number of ids, special tokens included (the decoder's output size)."""
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Tokenizer({self.vocabulary!r})"

    def token_id(self, token: str) -> int:
        """The id of one domain token; unknown tokens raise naming the vocabulary."""
        try:
            return self._ids[token]
        except KeyError:
            raise ValueError(
                f"unknown token {token!r}; accepted tokens: {self.vocabulary}"
            ) from None

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """``[BOS, ids of tokens..., EOS]``."""
        return [BOS_ID, *(self.token_id(t) for t in tokens), EOS_ID]

    def encode_batch(
        self, sequences: Sequence[Sequence[str]], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A (N, 2 + longest) LongTensor of ``encode`` rows, right-padded with PAD."""
        rows = [self.encode(s) for s in sequences]
        width = max((len(r) for r in rows), default=2)
        out = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(device) if device is not None else out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Token strings up to the first EOS; BOS and PAD are skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (BOS_ID, PAD_ID):
                continue
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"id {i} is out of range for a vocabulary of {len(self)} ids")
            out.append(self.tokens[i])
        return out

    def decode_batch(self, ids: torch.Tensor) -> list[list[str]]:
        """``decode`` each row of a (N, L) id tensor."""
        return [self.decode(row) for row in ids.tolist()]
