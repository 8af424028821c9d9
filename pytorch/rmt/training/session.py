"""One run of rmt.train, from checked flags to its results row: build the family (through the
registry) and the model, resume, train, test, record. The entry points call `execute`; it raises
the library's errors (rmt.errors) and leaves ending the process to them.
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import pandas as pd
import torch

from rmt import config
from rmt.atomic import atomic_write
from rmt.errors import CheckpointError, FlagError, RunError, UsageError
from rmt.families.base import BackboneFamily, Family
from rmt.families.registry import build_family
from rmt.model.ablation import MemoryAblation, task_suffix
from rmt.model.transformer import MemTransformerLM, init_weights
from rmt.results import GROUP_COLUMNS, append_result, check_target, groups_csv, read_results, result_row
from rmt.training import sharding
from rmt.training.checkpoint import first_line, load_file, load_model
from rmt.training.runtime import RunLogger, Runtime, prepare_run_dir, release_run_dir, seed_all
from rmt.training.trainer import LAST, Trainer

TESTED = "test.json"  # written after a run's test and results rows: the run is finished


def build_model(args, family: Family, runtime):
    """A new model as the flags describe it, or the evaluated checkpoint's (CheckpointError when it
    cannot be read or serve the family). A family with a model of its own (a Hugging Face
    backbone) builds it; the others get a MemTransformerLM."""
    if isinstance(family, BackboneFamily):
        state = None
        if args.eval_only and args.eval_checkpoint:  # without one: the backbone as loaded (hf_lm)
            try:
                state = load_file(args.eval_checkpoint)["model"]
            except (CheckpointError, KeyError) as e:
                raise CheckpointError(f"{args.eval_checkpoint} is not a training checkpoint of this task ({e})")
        return family.build_model(state).to(runtime.device)
    if args.eval_only:
        model, _ = load_model(args.eval_checkpoint, runtime.device)  # unreadable, or a dict of ours not a model
        family.check_model(model, args.eval_checkpoint)
        return model
    cfg = family.model_config()
    check_fits(cfg, args, runtime)
    model = MemTransformerLM.from_config(cfg)
    init_weights(model, args.init, args.init_std, args.init_range, args.proj_init_std)
    return model.to(runtime.device)


def check_fits(cfg, args, runtime) -> None:
    """Refuse sizes that cannot fit this machine before allocating them (an allocator's own
    failure comes late, as a traceback, or never, as swapping)."""
    rows = math.ceil(args.batch_size / runtime.world / args.batch_chunk)
    need, what = cfg.least_bytes(rows, training=not args.eval_only)
    free = runtime.available_bytes()
    if free is not None and need > free:
        raise FlagError(f"the model does not fit in memory: it needs at least {need / 2**30:,.1f} GiB for its "
                        f"{what}, more than the {free / 2**30:,.1f} GiB available on {runtime.describe()}: lower "
                        "--d_model, --d_inner, --n_layer, --num_mem_tokens, --tgt_len or --batch_size (or raise "
                        "--batch_chunk)")


def init_weights_from(model, path: str, device) -> None:
    """--init_checkpoint: another run's weights into this model (same shapes), nothing else; the
    parameters the model says a stage may add (`added_by_a_stage`) start as built."""
    try:
        missing, unexpected = model.load_state_dict(load_file(path, device)["model"], strict=False)
        missing = [k for k in missing if not k.startswith(getattr(model, "added_by_a_stage", ()))]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except (CheckpointError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"--init_checkpoint {path} does not fit this model ({first_line(e)}); "
                         "give a checkpoint of a run with the same model flags") from None


def write_results(args, family, test, model, runtime, run_dir, trainer: Trainer, train_time: float, log) -> None:
    """The run's results row (and per-group rows) from its test."""
    csv = args.results_csv or family.results_csv
    row = result_row(vars(args), model.config, runtime.describe(), run_dir,
                     family.name + task_suffix(args.memory_ablation), "test",
                     n_segments=family.n_segments, max_step=trainer.step if not args.eval_only else None,
                     **{"train_time_s": train_time, "tokens_per_s": trainer.tokens_per_s,
                        "peak_mem_mb": runtime.peak_mem_mb(), **test.row})  # a test's own speed wins
    target = csv
    try:  # an append that fails is undone: the file stays as it was
        append_result(csv, row)
        log(f"results row appended to {csv}")
        for group in test.groups:
            target = groups_csv(csv)
            append_result(target, {**{k: row[k] for k in GROUP_COLUMNS if k in row}, **group}, GROUP_COLUMNS)
    except OSError as e:
        raise RunError(f"cannot append to {target} ({e.strerror or e}); the run's checkpoints are complete: free "
                       f"space, then test it again with --restart --restart_dir {run_dir}") from None
    if test.groups:
        log(f"accuracy by {test.groups[0]['group_name']} appended to {groups_csv(csv)}")


def execute(args) -> int:
    """Train (or, with --eval_only, evaluate), test and record one run as the parsed, checked flags
    of rmt.train say (rmt.config.parse_training_args). Raises RMTError: UsageError for flags that
    do not fit this machine or family, the others for data, checkpoints and the run itself."""
    runtime = Runtime(args.device, args.amp, args.cuda)
    config.check_device(args, runtime.device, training=not args.eval_only)
    if getattr(args, "fsdp", False) and runtime.world == 1 and not args.eval_only:
        raise UsageError("--fsdp shards over the processes of torchrun: train under torchrun --nproc_per_node N "
                         "(N >= 2), or drop --fsdp")
    if args.batch_size % runtime.world:
        raise UsageError(f"--batch_size {args.batch_size} is not divisible by {runtime.world} processes")
    seed_all(args.seed)
    try:
        family = build_family(args, runtime)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # Everything that can be refused is, before a run directory exists: the results file, the
    # data, the model (its configuration, a checkpoint to evaluate or start from).
    if runtime.is_main and not args.no_results:
        try:
            check_target(args.results_csv or family.results_csv)
        except ValueError as e:
            raise UsageError(str(e)) from None
    family.load_data(print if runtime.is_main else lambda note: None)
    model = build_new_model(args, family, runtime)
    if args.init_checkpoint:
        init_weights_from(model, args.init_checkpoint, runtime.device)
    checkpoint_bytes = sum(p.numel() * p.element_size() * (3 if p.requires_grad and not args.eval_only else 1)
                           for p in model.parameters())  # weights, and Adam's two moments of what trains
    run_dir = prepare_run_dir(args, family.run_prefix, checkpoint_bytes) if runtime.is_main else None
    logger = RunLogger(run_dir, runtime.is_main, total=args.max_step)
    try:
        run(args, family, runtime, run_dir, logger, model)
    finally:  # an error too: the run directory is free for a restart by this process
        logger.close()
        runtime.close()
        if run_dir is not None:
            release_run_dir(run_dir)
    return 0


def run(args, family, runtime, run_dir, logger, model) -> None:
    """Resume, train, test and record one run of `model` (built, and started from
    --init_checkpoint's weights when given)."""
    if args.init_checkpoint:
        logger.log(f"weights from {args.init_checkpoint}")
    if getattr(args, "fsdp", False) and runtime.world > 1:  # a flag of the families over a Hugging Face
        try:                                                  # backbone; one process evaluates unsharded
            model = sharding.shard(model)
        except ValueError as e:
            raise FlagError(str(e)) from None
    trainer = Trainer(model, args, runtime, logger, run_dir, select_by=family.select_by)
    training_done = False  # a run stopped after its last training step and before its test
    if args.restart:  # before config.json is written: a checkpoint that does not fit changes nothing
        trainer.resume(pathlib.Path(args.restart_dir) / LAST, family)
        if trainer.step >= args.max_step and finished(args, family, trainer.step):
            raise RunError(f"{args.restart_dir} finished at step {trainer.step} already (its test and "
                             "results row were written then); raise --max_step to train on, or re-test with "
                             "python -m rmt.evaluate --checkpoint <run>/checkpoint_best.pt")
        training_done = trainer.step >= args.max_step
    if run_dir is not None:
        config.write_config(run_dir, args, model.config, {**family.config_extras(), "device": runtime.describe()})
    if getattr(args, "trained_flags", ""):
        logger.log(f"evaluating as trained: flags from {args.trained_flags}, then the command line's")
    logger.log(f"{family.describe(model)}; device {runtime.describe()}; run dir {run_dir}")
    if args.restart:
        logger.log(f"resumed at step {trainer.step}{family.resumed()}"
                   + ("; training had ended but the test had not run: testing now" if training_done else ""))
    t0 = time.time()
    if not args.eval_only:
        if not training_done and not trainer.fit(family):  # stopped by a signal: the checkpoint is saved, no test
            return
        if family.tests_best:
            trainer.load_best()
    train_time = time.time() - t0
    if runtime.is_main or trainer.sharded:  # the test: rank 0 alone (with every rank's shards: all), every row
        test = run_test(args, family, model)
    if runtime.is_main:
        if test.note:
            logger.log(test.note)
        ablated = "" if args.memory_ablation == "none" else f" (memory {args.memory_ablation})"
        logger.log(f"test{ablated} | " + " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in test.metrics.items()))
        if not args.no_results:
            write_results(args, family, test, model, runtime, run_dir, trainer, train_time, logger.log)
        if run_dir is not None:  # last: a restart of a run killed before this line tests it again
            text = json.dumps({"step": trainer.step, "test": test.metrics}, indent=2, default=str) + "\n"
            atomic_write(run_dir / TESTED, lambda f: f.write(text), text=True, encoding="utf-8")
    runtime.barrier()


def finished(args, family, step: int) -> bool:
    """Whether the run in --restart_dir was tested at `step`: its test.json, or (a run from before
    test.json, or one killed between its row and test.json) a test row of its own in the results CSV."""
    run_dir = pathlib.Path(args.restart_dir)
    if (run_dir / TESTED).is_file():
        return True
    if args.no_results:
        return False
    try:
        rows = read_results(args.results_csv or family.results_csv)
    except ValueError:  # a malformed CSV is reported when the row is appended
        return False
    mine = rows[(rows["run_id"].astype(str) == run_dir.name) & (rows["split"].astype(str) == "test")]
    return bool((pd.to_numeric(mine["max_step"], errors="coerce") == step).any())


def run_test(args, family, model):
    """The family's test of `model`, through a memory ablation when one is asked for."""
    if args.memory_ablation == "none":
        return family.test(model)
    try:
        return family.test(MemoryAblation(model, args.memory_ablation, args.seed))
    except ValueError as e:
        raise FlagError(str(e)) from None


def build_new_model(args, family, runtime):
    """build_model, with a bad model flag (ValueError) and an allocation failure as one-line errors."""
    try:
        return build_model(args, family, runtime)
    except CheckpointError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    except RuntimeError as e:  # torch.OutOfMemoryError too: sizes no machine of this kind can hold
        if "alloc" not in str(e).lower() and not isinstance(e, torch.OutOfMemoryError):
            raise
        raise FlagError(f"the model does not fit in memory on {runtime.describe()} ({first_line(e)}); "
                         "lower --d_model, --d_inner, --n_layer or --n_head") from None
