"""Per-CPU TLBs: VMID-tagged leaf entries and walk-cache (table) entries.

Entries are kept per level in dicts keyed by `(ipa >> level_shift) << 16 | vmid`,
so a lookup is one dict probe per leaf level. A lookup that matches entries
at two levels (e.g. a stale 4 KiB page and a new 1 GiB block) is a TLB
conflict: it is returned as such, never resolved silently.

Fill runs (`fill_run`, the vCPU read batches of sim/batch.py) are kept aside
and applied when the TLB is next looked at in a way they could change
(`settle`): a run of n new consecutive page entries evicts the n oldest, so
once runs of `capacity` fills are pending, everything cached before them and
all but their last `capacity` fills are gone unseen (counted as evictions,
never built). Same entries, order and counts as the fills one by one.

Simplifications (docs/model.md): capacity is counted across all leaf levels
with FIFO or LRU replacement (real TLBs are set-associative, often
pseudo-LRU); a TLB fills only on walks the model performs (no speculative
fills); invalidations take effect on every CPU at the issuing CPU's DSB.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice, repeat

VMID_BITS = 16
VMID_MASK = (1 << VMID_BITS) - 1

# TLBI operations (stage-2 only forms; Arm ARM C5.5 "TLB maintenance instructions").
VMALLS12E1IS = "VMALLS12E1IS"
IPAS2E1IS = "IPAS2E1IS"
IPAS2LE1IS = "IPAS2LE1IS"
RIPAS2E1IS = "RIPAS2E1IS"
RIPAS2LE1IS = "RIPAS2LE1IS"
# Stage-1 (and combined stage-1+2) entries of the current VMID. With stage 1
# off, every leaf entry here is such a combined entry; walk-cache entries of
# the stage-2 tables are untouched. KVM issues it after IPAS2E1IS.
VMALLE1IS = "VMALLE1IS"
TLBI_OPS = (VMALLS12E1IS, IPAS2E1IS, IPAS2LE1IS, RIPAS2E1IS, RIPAS2LE1IS, VMALLE1IS)


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two or more cached leaf entries translate one address: (level, desc) each."""

    ipa: int
    hits: tuple


class TLB:
    """One CPU's TLB. `capacity`/`walk_capacity` None means unbounded."""

    def __init__(self, shifts: tuple, leaf_levels: tuple, table_levels: tuple,
                 capacity: int | None = 2048, walk_capacity: int | None = 64,
                 policy: str = "lru") -> None:
        if policy not in ("lru", "fifo"):
            raise ValueError(f"TLB replacement policy {policy!r}: use lru or fifo")
        self.shifts = shifts
        self.capacity, self.walk_capacity, self.policy = capacity, walk_capacity, policy
        self.leaf: dict[int, dict[int, int]] = {lvl: {} for lvl in leaf_levels}
        self.walkc: dict[int, dict[int, tuple]] = {lvl: {} for lvl in table_levels}
        self._probe = tuple((lvl, shifts[lvl], self.leaf[lvl]) for lvl in sorted(leaf_levels))
        self._wprobe = tuple((lvl, shifts[lvl], self.walkc[lvl])
                             for lvl in sorted(table_levels, reverse=True))
        # the dicts as tuples: `any(...)` tells in one call whether a part is empty
        self._leafdicts = tuple(self.leaf.values())
        self._walkdicts = tuple(self.walkc.values())
        self._order: dict[tuple[int, int], None] = {}
        self._worder: dict[tuple[int, int], None] = {}
        self.hits = self.misses = self.conflicts = self.evictions = 0
        # fill runs not applied yet, oldest first: (level-3 keys as a range, descs)
        self._pend: list = []
        self._npend = 0
        self._lru = policy == "lru" and capacity is not None
        self.batch = None  # this CPU's vCPU read batch in flight (sim/batch.py), or None

    # --- lookups -------------------------------------------------------------
    def lookup(self, vmid: int, ipa: int) -> tuple[int, int] | Conflict | None:
        """(level, desc) of the cached leaf translating `ipa`, a Conflict, or None."""
        found = None
        for lvl, shift, dct in self._probe:
            if dct:
                desc = dct.get(((ipa >> shift) << 16) | vmid)
                if desc is not None:
                    if self._pend:
                        self.settle()  # (a pending run may have evicted it)
                        return self.lookup(vmid, ipa)
                    if found is not None:
                        return self._conflict(vmid, ipa)
                    found = (lvl, desc)
        if found is None:
            if self._pend and self._pending(((ipa >> self.shifts[3]) << 16) | vmid):
                self.settle()
                return self.lookup(vmid, ipa)
            self.misses += 1
            return None
        self.hits += 1
        if self._lru:
            k = (found[0], ((ipa >> self.shifts[found[0]]) << 16) | vmid)
            o = self._order
            del o[k]
            o[k] = None
        return found

    def _conflict(self, vmid: int, ipa: int) -> Conflict:
        hits = []
        for lvl, shift, dct in self._probe:
            desc = dct.get(((ipa >> shift) << 16) | vmid)
            if desc is not None:
                hits.append((lvl, desc))
        self.conflicts += 1
        return Conflict(ipa, tuple(hits))

    def walk_lookup(self, vmid: int, ipa: int) -> tuple[int, int, int] | None:
        """Deepest cached table entry for `ipa`: (level, next table PA, generation)."""
        for lvl, shift, dct in self._wprobe:
            e = dct.get(((ipa >> shift) << 16) | vmid)
            if e is not None:
                return (lvl,) + e
        return None

    # --- fills ---------------------------------------------------------------
    def fill(self, vmid: int, ipa: int, level: int, desc: int) -> None:
        key = ((ipa >> self.shifts[level]) << 16) | vmid
        if self._pend:
            if level == 3 and key not in self.leaf[3] and not self._pending(key):
                self.fill_run(range(key, key + 1), (desc,))  # (behind the runs, in order)
                return
            self.settle()
        self.leaf[level][key] = desc
        if self.capacity is None:
            return
        o = self._order
        o.pop((level, key), None)
        o[(level, key)] = None
        while len(o) > self.capacity:
            lvl, k = next(iter(o))
            del o[(lvl, k)]
            del self.leaf[lvl][k]
            self.evictions += 1

    def fill_run(self, keys: range, descs) -> None:
        """Fills of the level-3 `keys` (consecutive, step 1 << 16), with `descs`, in order.

        None of the keys may be cached or pending (the read batch checked). Applied
        lazily: `settle`."""
        if self.capacity is None:
            self.leaf[3].update(zip(keys, descs))
            return
        self._pend.append((keys, descs))
        self._npend += len(keys)
        cap = self.capacity
        if self._npend >= cap:
            # everything cached before the runs is evicted by them, and so are their
            # own fills but the last `cap`: drop them now, never built
            self.evictions += len(self._order) + self._npend - cap
            for dct in self._leafdicts:
                dct.clear()
            self._order.clear()
            runs = self._pend
            drop = self._npend - cap
            i = 0
            while drop >= len(runs[i][0]):
                drop -= len(runs[i][0])
                i += 1
            k, ds = runs[i]
            self._pend = [(k[drop:], ds[drop:])] + runs[i + 1:]
            self._npend = cap

    def _pending(self, key: int) -> bool:
        return any(key in keys for keys, _ in self._pend)

    def settle(self) -> None:
        """Apply the pending fill runs, as their fills one by one would have."""
        runs = self._pend
        if not runs:
            return
        n = self._npend
        self._pend, self._npend = [], 0
        order = self._order
        out = len(order) + n - self.capacity  # (n <= capacity: `fill_run` compacts)
        if out > 0:
            leaf = self.leaf
            for lk in list(islice(order, out)):
                del order[lk]
                del leaf[lk[0]][lk[1]]
            self.evictions += out
        dct = self.leaf[3]
        for keys, descs in runs:
            dct.update(zip(keys, descs))
            order.update(dict.fromkeys(zip(repeat(3), keys)))

    def fill_walk(self, vmid: int, ipa: int, level: int, table_pa: int, gen: int) -> None:
        """Cache the table entry at `level` that points to `table_pa` (generation `gen`)."""
        key = ((ipa >> self.shifts[level]) << 16) | vmid
        self.walkc[level][key] = (table_pa, gen)
        if self.walk_capacity is None:
            return
        o = self._worder
        o.pop((level, key), None)
        o[(level, key)] = None
        while len(o) > self.walk_capacity:
            lvl, k = next(iter(o))
            del o[(lvl, k)]
            del self.walkc[lvl][k]

    # --- invalidation --------------------------------------------------------
    def invalidate(self, op: str, vmid: int, ipa: int = 0, size: int = 0, ttl: int = -1) -> int:
        """Apply one completed TLBI to this TLB; returns entries removed."""
        if self._pend:
            self.settle()
        if op == VMALLS12E1IS:
            return self._drop_all(vmid)
        if op == VMALLE1IS:
            return self._drop_all(vmid, walk=False)
        last_only = op in (IPAS2LE1IS, RIPAS2LE1IS)
        if op in (IPAS2E1IS, IPAS2LE1IS):
            # One IPA: one key per level (the hot case: KVM's flush by IPA on every
            # DSB, applied to every CPU's TLB). Same effect as _drop_range(size 1).
            n = 0
            order = self._order
            for lvl, shift, dct in self._probe:
                if dct and (ttl < 0 or lvl == ttl):
                    k = ((ipa >> shift) << 16) | vmid
                    if k in dct:
                        del dct[k]
                        order.pop((lvl, k), None)
                        n += 1
            if not last_only:
                order = self._worder
                for lvl, shift, dct in self._wprobe:
                    if dct:
                        k = ((ipa >> shift) << 16) | vmid
                        if k in dct:
                            del dct[k]
                            order.pop((lvl, k), None)
                            n += 1
            return n
        n = 0
        for lvl, dct in self.leaf.items():
            if ttl >= 0 and lvl != ttl:
                continue  # FEAT_TTL: a wrong level hint may leave the entry in place
            n += self._drop_range(dct, self._order, lvl, vmid, ipa, size)
        if not last_only:
            for lvl, dct in self.walkc.items():
                n += self._drop_range(dct, self._worder, lvl, vmid, ipa, size)
        return n

    def _drop_range(self, dct: dict, order: dict, lvl: int, vmid: int, ipa: int,
                    size: int) -> int:
        shift = self.shifts[lvl]
        first, last = ipa >> shift, (ipa + size - 1) >> shift
        if last - first < len(dct):
            keys = [k for k in ((i << 16) | vmid for i in range(first, last + 1)) if k in dct]
        else:
            keys = [k for k in dct if (k & VMID_MASK) == vmid and first <= (k >> 16) <= last]
        for k in keys:
            del dct[k]
            order.pop((lvl, k), None)
        return len(keys)

    def _drop_all(self, vmid: int, walk: bool = True) -> int:
        n = 0
        groups = ((self.leaf, self._order), (self.walkc, self._worder)) if walk else (
            (self.leaf, self._order),)
        for group, order in groups:
            for lvl, dct in group.items():
                if not dct:
                    continue
                keys = [k for k in dct if (k & VMID_MASK) == vmid]
                if len(keys) == len(dct):
                    # every entry is this VMID's (one VM): drop the level at once
                    dct.clear()
                    if order:
                        for k in keys:
                            order.pop((lvl, k), None)
                else:
                    for k in keys:
                        del dct[k]
                        order.pop((lvl, k), None)
                n += len(keys)
        return n

    # --- inspection ----------------------------------------------------------
    def leaf_entries(self, vmid: int | None = None):
        """Yield (level, vmid, base ipa, desc) of every cached leaf entry."""
        self.settle()
        for lvl, dct in self.leaf.items():
            for k, desc in dct.items():
                if vmid is None or (k & VMID_MASK) == vmid:
                    yield lvl, k & VMID_MASK, (k >> 16) << self.shifts[lvl], desc

    def walk_entries(self, vmid: int | None = None):
        """Yield (level, vmid, base ipa, table_pa, generation) of walk-cache entries."""
        for lvl, dct in self.walkc.items():
            for k, (pa, gen) in dct.items():
                if vmid is None or (k & VMID_MASK) == vmid:
                    yield lvl, k & VMID_MASK, (k >> 16) << self.shifts[lvl], pa, gen

    def __len__(self) -> int:
        self.settle()
        return sum(len(d) for d in self.leaf.values())
