"""gather_distributed=True with two CPU processes (gloo) against one process on the whole batch.

A small Linear projection wrapped in DistributedDataParallel maps each rank's inputs to embeddings;
the loss contrasts the local anchors with the global batch. After backward (DDP averages the
parameter gradients over the ranks) the loss value and the parameter gradients must equal those
of a single process running the same Linear on the concatenated batch. The ranks hold different
numbers of images on purpose.
"""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from asymcl.losses import AsymmetricFocalContrastiveLoss, ContrastiveMemory, afcl_loss

IMAGES_PER_RANK = (5, 3)
N_VIEWS, D_IN, D_OUT = 2, 6, 4
SETTINGS = dict(gamma=1.5, eta=20.0, temperature=0.2)


def _global_batch():
    generator = torch.Generator().manual_seed(0)
    n_images = sum(IMAGES_PER_RANK)
    inputs = torch.randn(n_images, N_VIEWS, D_IN, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2])  # class 3 is a lone image
    image_mask = torch.rand(n_images, n_images, generator=generator) < 0.3
    return inputs, labels, image_mask


def _projection() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(D_IN, D_OUT).double()


CASES = {
    "labels-batch": dict(positives="labels", normalization="batch"),
    "labels-pairs": dict(positives="labels", normalization="pairs"),
    "labels-pairs-reference": dict(positives="labels", normalization="pairs", impl="reference"),
    "mask-batch-reference": dict(positives="mask", normalization="batch", impl="reference"),
    "mask-pairs": dict(positives="mask", normalization="pairs"),
    "views-only-batch": dict(positives="views", normalization="batch"),
    # Reference rows, the same on every rank (rank-local, not gathered): N stays the global batch.
    "labels-batch-refs": dict(positives="labels", normalization="batch", refs=True),
    "labels-pairs-refs-reference": dict(positives="labels", normalization="pairs", impl="reference", refs=True),
}
MEMORY_SIZE, MEMORY_STEPS = 20, 3  # 16 global rows per step: the queue wraps on the third step


def _references():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(7, D_OUT, generator=generator, dtype=torch.float64), torch.tensor([3, 3, 0, 1, 4, 2, 4])


def _memory_steps():
    """Per step: the global inputs (sum IMAGES_PER_RANK, V, D_IN) and labels."""
    generator = torch.Generator().manual_seed(3)
    n_images = sum(IMAGES_PER_RANK)
    return [
        (
            torch.randn(n_images, N_VIEWS, D_IN, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (n_images,), generator=generator),
        )
        for _ in range(MEMORY_STEPS)
    ]


def _memory_module():
    return ContrastiveMemory(
        AsymmetricFocalContrastiveLoss(
            SETTINGS["gamma"], SETTINGS["eta"], temperature=SETTINGS["temperature"], gather_distributed=True
        ),
        MEMORY_SIZE,
    )


def _loss_inputs(case, labels, image_mask, rows):
    positives = CASES[case]["positives"]
    if positives == "labels" and CASES[case].get("refs"):
        ref_features, ref_labels = _references()
        return dict(labels=labels[rows], ref_features=ref_features, ref_labels=ref_labels)
    if positives == "labels":
        return dict(labels=labels[rows])
    if positives == "mask":
        return dict(mask=image_mask[rows])  # local images x global images
    return {}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    try:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        inputs, labels, image_mask = _global_batch()
        start = sum(IMAGES_PER_RANK[:rank])
        rows = slice(start, start + IMAGES_PER_RANK[rank])
        model = torch.nn.parallel.DistributedDataParallel(_projection())
        results = {}
        for case, spec in CASES.items():
            model.zero_grad()
            embeddings = model(inputs[rows])
            extra = _loss_inputs(case, labels, image_mask, rows)
            if case == "labels-batch":  # the module form
                criterion = AsymmetricFocalContrastiveLoss(
                    SETTINGS["gamma"],
                    SETTINGS["eta"],
                    temperature=SETTINGS["temperature"],
                    normalization=spec["normalization"],
                    gather_distributed=True,
                )
                loss = criterion(embeddings, extra.get("labels"))
            else:
                loss = afcl_loss(
                    embeddings,
                    **extra,
                    **SETTINGS,
                    normalization=spec["normalization"],
                    impl=spec.get("impl", "auto"),
                    gather_distributed=True,
                )
            loss.backward()
            results[case] = dict(
                value=loss.detach().clone(),
                grads={name: p.grad.detach().clone() for name, p in model.module.named_parameters()},
            )

        # The memory: every rank enqueues the gathered global batch, so the queues agree.
        memory = _memory_module()
        results["memory"] = []
        for step_inputs, step_labels in _memory_steps():
            model.zero_grad()
            loss = memory(model(step_inputs[rows]), step_labels[rows])
            loss.backward()
            results["memory"].append(
                dict(
                    value=loss.detach().clone(),
                    queue=memory.queue_features.clone(),
                    queue_labels=memory.queue_labels.clone(),
                    grads={name: p.grad.detach().clone() for name, p in model.module.named_parameters()},
                )
            )

        # A bad input on one rank makes every rank raise, instead of leaving the other waiting.
        bad_labels = labels[rows].float() if rank == 1 else labels[rows]
        try:
            afcl_loss(model(inputs[rows]), bad_labels, **SETTINGS, gather_distributed=True)
            results["bad-input"] = "no error"
        except (TypeError, ValueError) as error:
            results["bad-input"] = f"{type(error).__name__}: {error}"
        # Different view counts across ranks are refused on both.
        views = inputs[rows][:, :1] if rank == 0 else inputs[rows]
        try:
            afcl_loss(model(views), labels[rows], **SETTINGS, gather_distributed=True)
            results["views-mismatch"] = "no error"
        except ValueError as error:
            results["views-mismatch"] = str(error)
        # A mask of local x local images (the single-process shape) instead of local x global.
        local_square = image_mask[rows][:, rows] if rank == 0 else image_mask[rows]
        try:
            afcl_loss(model(inputs[rows]), mask=local_square, **SETTINGS, gather_distributed=True)
            results["mask-width"] = "no error"
        except ValueError as error:
            results["mask-width"] = str(error)
        # Second-order gradients through the all-gather are refused on every rank, never wrong.
        try:
            loss = afcl_loss(model.module(inputs[rows]), labels[rows], **SETTINGS, gather_distributed=True)
            torch.autograd.grad(loss, list(model.module.parameters()), create_graph=True)
            results["create-graph"] = "no error"
        except RuntimeError as error:
            results["create-graph"] = str(error)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except Exception:  # surface the worker's traceback in the parent's assertion message
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as handle:
            handle.write(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    if not dist.is_available():
        pytest.fail("torch.distributed is not available in this torch build; the distributed loss cannot be tested")
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        while not context.join(timeout=60):
            pass
    except Exception as error:
        details = "\n".join(p.read_text() for p in out_dir.glob("*.error"))
        raise AssertionError(f"a worker failed:\n{details}") from error
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(2)]


def _single_process(case):
    inputs, labels, image_mask = _global_batch()
    model = _projection()
    spec = CASES[case]
    everything = slice(0, sum(IMAGES_PER_RANK))
    loss = afcl_loss(
        model(inputs),
        **_loss_inputs(case, labels, image_mask, everything),
        **SETTINGS,
        normalization=spec["normalization"],
        impl="reference",
    )
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def test_memory_under_ddp_equals_one_process_on_the_concatenated_batches(rank_results):
    model = _projection()
    memory = ContrastiveMemory(
        AsymmetricFocalContrastiveLoss(SETTINGS["gamma"], SETTINGS["eta"], temperature=SETTINGS["temperature"]),
        MEMORY_SIZE,
    )
    for step, (inputs, labels) in enumerate(_memory_steps()):
        model.zero_grad()
        loss = memory(model(inputs), labels)
        loss.backward()
        for rank, results in enumerate(rank_results):
            got = results["memory"][step]
            assert got["value"].item() == pytest.approx(loss.item(), rel=1e-10), f"rank {rank}, step {step}"
            torch.testing.assert_close(got["queue"], memory.queue_features, rtol=1e-12, atol=1e-14)
            assert torch.equal(got["queue_labels"], memory.queue_labels)
            for name, p in model.named_parameters():
                torch.testing.assert_close(
                    got["grads"][name], p.grad, rtol=1e-9, atol=1e-12, msg=f"rank {rank}, {name}"
                )
    assert memory.filled == MEMORY_SIZE


@pytest.mark.parametrize("case", list(CASES))
def test_value_and_ddp_gradients_equal_single_process(rank_results, case):
    value, grads = _single_process(case)
    assert value.item() > 0
    for rank, results in enumerate(rank_results):
        got = results[case]
        assert got["value"].item() == pytest.approx(value.item(), rel=1e-10), f"rank {rank}"
        for name, grad in grads.items():
            assert grad.abs().max() > 0
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=f"rank {rank}, {name}")


def test_bad_input_on_one_rank_raises_on_every_rank(rank_results):
    assert rank_results[1]["bad-input"].startswith("TypeError: labels must be integer class ids")
    assert rank_results[0]["bad-input"].startswith("ValueError: rank(s) [1] rejected their loss inputs")


def test_view_count_mismatch_is_refused_on_every_rank(rank_results):
    for results in rank_results:
        assert "same views V on every rank" in results["views-mismatch"]


def test_second_order_through_the_gather_is_refused(rank_results):
    for results in rank_results:
        assert "second-order gradients (create_graph=True) through gather_distributed=True" in results["create-graph"]


def test_mask_must_span_the_global_batch(rank_results):
    for results in rank_results:
        assert "mask must have shape (local images, global images)" in results["mask-width"]
        assert "rank(s) [0] passed [5] columns" in results["mask-width"]
