"""Models of a self-evolution run: the base policy, proposers and PPM scorers, cached.

Generation engines and PPM scorers compile once per shape; a run makes many of them
(every round searches and evaluates), so they are built here once per checkpoint and
kept while that checkpoint is in use.
"""

from __future__ import annotations

import os
from typing import Any

from rstar_jax import step_format as sf


class ModelCache:
    """Proposers and scorers over checkpoint directories, for one engine config."""

    def __init__(self, engine_cfg, tokenizer_dir: str, *, mesh=None):
        from rstar_jax.engine.settings import EngineSettings
        self.engine_cfg = engine_cfg
        self.settings = EngineSettings.from_config(engine_cfg)
        self.tokenizer_dir = tokenizer_dir
        self.mesh = mesh
        self._tokenizer = None
        self._engines: dict[str, Any] = {}
        self._scorers: dict[str, Any] = {}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from rstar_jax.models import load_tokenizer
            self._tokenizer = load_tokenizer(self.tokenizer_dir)
        return self._tokenizer

    def _engine(self, policy_dir: str):
        if policy_dir not in self._engines:
            from rstar_jax.engine import engine_from_config
            from rstar_jax.models import load_pretrained, params_of, resize_embeddings
            policy = load_pretrained(policy_dir, dtype=self.settings.dtype)
            if len(self.tokenizer) > policy.cfg.vocab_size:
                resize_embeddings(policy, self.tokenizer)
            self._engines = {policy_dir: engine_from_config(
                params_of(policy), policy.cfg, self.engine_cfg, tokenizer=self.tokenizer,
                mesh=self.mesh)}       # one policy's engine at a time: memory
        return self._engines[policy_dir]

    def proposer(self, policy_dir: str, *, stop_tags=sf.STOP_TAGS, seed: int = 0):
        """An `EngineProposer` over the policy in `policy_dir` that stops at `stop_tags`."""
        from rstar_jax.engine import EngineProposer
        return EngineProposer(self._engine(policy_dir), self.tokenizer,
                              max_new_tokens=self.settings.max_new_tokens,
                              top_p=self.settings.top_p, top_k=self.settings.top_k, seed=seed,
                              stop_tags=tuple(stop_tags))

    def scorer(self, ppm_dir: str):
        """An `EngineScorer` (tanh(v/5) at the last token) over the PPM in `ppm_dir`."""
        if ppm_dir not in self._scorers:
            from rstar_jax.engine import EngineScorer
            from rstar_jax.models import load_ppm, params_of
            ppm = load_ppm(ppm_dir, dtype=self.settings.dtype)
            self._scorers = {ppm_dir: EngineScorer(
                params_of(ppm), ppm.cfg, self.tokenizer, batch_size=self.settings.score_batch,
                min_len=self.settings.score_min_len, max_len=self.settings.max_seq_len,
                mesh=self.mesh, group_size=self.settings.score_group_size)}
        return self._scorers[ppm_dir]

    def release(self) -> None:
        self._engines.clear()
        self._scorers.clear()


def is_policy_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))
