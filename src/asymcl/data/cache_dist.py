"""Feature extraction spread over the ranks of a torch.distributed process group.

:func:`asymcl.data.feature_cache.build_feature_cache` comes here when a process group of N > 1
ranks is initialised (``torchrun``, ``srun`` with the torch environment variables, Lightning's
launcher: see ``asymcl cache build``). Every rank calls it with the same arguments; then:

1. rank 0 takes the entry's build lock (held to the end, so no other job cleans or writes the
   entry meanwhile), removes what a killed writer left, checks the shards and lists the missing
   images; the list goes to every rank;
2. rank r extracts the r-th contiguous N-th of that list into its own shards, in the one shared
   cache folder (same key, same content-addressed atomic shards as one process writes, views
   seeded by image, so the numbers do not depend on N or on which rank computed an image);
3. the ranks exchange whether they succeeded (one failure, e.g. a full disk, becomes the same
   :class:`DataError` on every rank instead of a hang), then every rank reads the whole entry.

A rank that is killed leaves at most a temporary file and its finished shards; the launcher stops
the others, and the next build (on any number of processes) removes the temporary file and
extracts only what is still missing. One process reuses what N wrote and the other way round:
shards are found by image fingerprint, not by who wrote them.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext

from asymcl.errors import AsymclError, DataError


def world() -> tuple[int, int] | None:
    """(rank, world size) of an initialised process group of more than one process, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return (dist.get_rank(), size) if size > 1 else None


def _broadcast(obj, src: int = 0):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_gather(obj) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def build_distributed(job, report_reuse: bool, *, entry_lock, scan, extract, finish):
    """The whole :class:`FeatureCache` on every rank; each rank extracted a disjoint part.

    The steps are feature_cache's own (passed in, so that this module does not import it back):
    ``entry_lock(directory, log)``, ``scan(job, clean_temporaries) -> (found, missing)``,
    ``extract(job, todo, found, part) -> count``, ``finish(job, found, computed, report_reuse, log)``.
    """
    import torch.distributed as dist

    from asymcl.data.cache_store import hold_in_use

    here = world()
    if here is None:  # the caller checks world() first; a lone process has nothing to share
        raise RuntimeError("build_distributed needs a process group of more than one process")
    rank, size = here
    # The missing list is rank 0's indices into its dataset: every rank must hold the same images
    # (in the same order) and compute the same key.
    images = hashlib.sha256("\n".join(job.fingerprints).encode()).hexdigest()
    keys = _all_gather((job.key_hash, images))
    if len(set(keys)) > 1:  # e.g. nodes whose CPUs differ on bf16, other weights or data on one node
        raise DataError(
            f"feature cache: the ranks computed {len(set(keys))} different cache keys or image lists; "
            "their frozen weights, images or precision differ: give every node the same weights and "
            "data, and set data.cache_precision to bf16 or fp32 rather than auto"
        )
    with entry_lock(job.directory, job.log) if rank == 0 else nullcontext():
        hold_in_use(job.directory)
        todo, error = None, None
        if rank == 0:
            try:
                todo = list(scan(job)[1].items())
            except AsymclError as exc:
                error = str(exc)
        todo, error = _broadcast((todo, error))
        if error is not None:
            raise DataError(error)
        share = math.ceil(len(todo) / size) if todo else 0
        mine = todo[rank * share : (rank + 1) * share]
        computed, failure = 0, None
        try:
            computed = extract(job, mine, {}, part=f" (rank {rank} of {size})")
        except AsymclError as exc:
            failure = f"rank {rank}: {exc}"
        results = _all_gather((computed, failure))
        failures = [f for _, f in results if f]
        if failures:
            raise DataError(
                f"feature cache: distributed extraction failed on {failures[0]}"
                + (f" (and {len(failures) - 1} more ranks)" if len(failures) > 1 else "")
            )
        # Every rank has finished writing: nothing is half-written, so no temporary file is removed.
        found, missing = scan(job, clean_temporaries=False)
        if missing:
            raise DataError(
                f"feature cache: {len(missing)} images are still missing from {job.directory} after "
                "every rank extracted its part; is the folder shared by all the ranks (one file system)?"
            )
        dist.barrier()  # rank 0 keeps the lock until every rank has read the entry
    return finish(job, found, sum(n for n, _ in results), report_reuse, log=rank == 0)
