"""The references the aggregation stage bins with: stored baselines and monitors' warm-ups.

The aggregation stage bins each partial with the reference the judge will judge it against,
when it knows one; when it does not (yet), it samples the rows and the judge bins them later.
So this book only has to be *eventually* right: a baseline picked up a little later costs
samples, never a wrong verdict. :meth:`ReferenceBook.refresh` re-reads Redis every
``baseline_refresh_s`` and whenever the references' version counter moves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from streamproc.baseline import ReferenceProfile
from streamproc.baseline.reference import Reference, ReferenceCache, references_of
from streamproc.config import MonitoringConfig
from streamproc.sketch import OTHER

log = logging.getLogger(__name__)


class ReferenceBook:
    """Per model and version: the baseline's references and the warm-up ones, by segment key.

    Examples
    --------
    >>> from streamproc.dev.synthetic import WorkloadSpec, reference_profile
    >>> profile = reference_profile(WorkloadSpec(), n_rows=2000)
    >>> book = ReferenceBook(MonitoringConfig(), ReferenceCache())
    >>> book.set_baseline(profile.model_id, profile.model_version, profile)
    True
    >>> model, version = profile.model_id, profile.model_version
    >>> book.lookup(model, version, "all").origin
    'baseline'
    >>> book.lookup(model, version, "country=XX") is None  # no pooled segment in it
    True
    """

    def __init__(self, cfg: MonitoringConfig, cache: ReferenceCache) -> None:
        self.cfg = cfg
        self.cache = cache
        self._baselines: dict[tuple[str, str], tuple[str, dict[str, Reference], set[str]]] = {}
        self._warmups: dict[tuple[str, str], dict[str, Reference]] = {}

    def set_baseline(self, model: str, version: str, profile: ReferenceProfile | None) -> bool:
        """Use ``profile`` (``None``: deleted) for ``model``/``version``; ``True`` if changed."""
        if profile is None:
            return self._baselines.pop((model, version), None) is not None
        features = self.cfg.for_model(model).features
        refs = references_of(profile.segments, "baseline", features)
        for ref in refs.values():
            self.cache.put(ref)
        entry = (profile.created_at, refs, set(profile.segment_dims))
        old = self._baselines.get((model, version))
        if old is not None and {k: r.fp for k, r in old[1].items()} == {
            k: r.fp for k, r in refs.items()
        }:
            return False
        self._baselines[(model, version)] = entry
        return True

    def set_warmups(self, model: str, version: str, refs: dict[str, Reference]) -> None:
        for ref in refs.values():
            self.cache.put(ref)
        self._warmups[(model, version)] = dict(refs)

    def baseline_versions(self) -> Iterable[tuple[str, str]]:
        return list(self._baselines)

    def lookup(self, model_id: str, version: str, raw_key: str) -> Reference | None:
        dim, sep, _ = raw_key.partition("=")
        base = self._baselines.get((model_id, version))
        if base is not None:
            refs, dims = base[1], base[2]
            ref = refs.get(raw_key)
            if ref is not None:
                return ref
            if sep and dim in dims:
                return refs.get(f"{dim}={OTHER}")
        warm = self._warmups.get((model_id, version))
        if warm:
            ref = warm.get(raw_key)
            if ref is None and sep:
                ref = warm.get(f"{dim}={OTHER}")
            return ref
        return None

    def by_fp(self, fp: str) -> Reference | None:
        return self.cache.get(fp)

    async def refresh(self, client: Any, prefix: str, models: Iterable[str]) -> list[str]:
        """Re-read the stored baselines and warm-ups of ``models``; return one line per
        change (for the log)."""
        from streamproc.baseline import AsyncBaselineStore

        store = AsyncBaselineStore(client, prefix)
        changes: list[str] = []
        for model in sorted(set(models)):
            profiles = {p.model_version: p for p in await store.all_versions(model)}
            for m, version in [k for k in self._baselines if k[0] == model]:
                if version not in profiles and self.set_baseline(m, version, None):
                    changes.append(f"model {model} version {version}: baseline deleted")
            for version, profile in sorted(profiles.items()):
                if self.set_baseline(model, version, profile):
                    changes.append(
                        f"model {model} version {version}: baseline of {profile.created_at} "
                        f"({profile.source})"
                    )
            warm = await client.hgetall(f"{prefix}:warmup:{model}")
            by_version: dict[str, dict[str, Reference]] = {}
            wanted = {}
            for field, fp in warm.items():
                version, _, key = field.decode().partition("|")
                wanted[(version, key)] = fp.decode()
            await self.cache.load(client, prefix, wanted.values())
            for (version, key), fp in wanted.items():
                ref = self.cache.get(fp)
                if ref is not None:
                    by_version.setdefault(version, {})[key] = ref
            for version, refs in by_version.items():
                self.set_warmups(model, version, refs)
        return changes
