"""The command handlers: each takes the parsed arguments, calls the library and prints what a
user needs to see. Each imports what it needs when it runs, so ``imgcls --help`` and a
single-image ``imgcls predict`` start quickly."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from imgcls.errors import UserError


def _cmd_models(args: argparse.Namespace) -> int:
    from imgcls.models.catalog import catalog, rows_as_dicts
    from imgcls.models.summary import human

    rows = catalog(args.pattern)
    if not rows:
        raise UserError(f"no registered architecture matches {args.pattern!r}")
    if args.json:
        print(json.dumps(rows_as_dicts(rows), indent=2))
        return 0
    head = ("name", "family", "source", "params", "MACs", "input", "pretrained", "options")
    table = [
        (
            r.name,
            r.family,
            r.source,
            f"{r.params / 1e6:.2f}M",
            human(r.macs),
            "x".join(str(d) for d in r.input_size[1:]),
            ",".join(r.pretrained) or "-",
            ",".join(r.options) or "-",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *table, strict=True)]
    for line in (head, *table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print(
        f"\n{len(rows)} architectures; MACs = multiply-adds of one forward pass at the input size."
        "\nAny timm or torchvision classifier also works as timm/NAME or torchvision/NAME."
    )
    return 0


# --------------------------------------------------------------------------------------- summary
def _cmd_summary(args: argparse.Namespace) -> int:
    from imgcls.models.summary import summarize_arch

    size = tuple(args.input_size) if args.input_size else None
    if size is not None and (min(size) < 1 or size[0] != 3):
        raise UserError(f"--input-size must be 3 H W with positive H and W, not {size}")
    try:
        s = summarize_arch(args.arch, input_size=size, num_classes=args.num_classes, norm=args.norm, attn=args.attn)
    except RuntimeError as e:
        if size is None:
            raise
        reason = str(e).splitlines()[0]
        raise UserError(f"{args.arch} cannot run at input size {size}: {reason}") from None
    print(json.dumps(s.to_dict(), indent=2) if args.json else s.table())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import shlex
    import time

    from imgcls.api import train

    started = getattr(args, "_started", time.monotonic())
    from imgcls.cli.options import data_specs

    options = data_specs({
        k: v for k, v in vars(args).items() if k not in ("handler", "config", "resume", "command", "out", "_started")
    })  # fmt: skip
    _allow_train_pixels(args, options)
    run = train(out=args.out, config=args.config, resume=args.resume, started=started, **options)
    if os.environ.get("RANK", "0") != "0":
        return 0
    from imgcls.api import run_config

    model = run / "model"
    d = run_config(run).data
    # as the user wrote it, else (and on --resume: it trains on its own) the run's
    given = [options["data"], *options.get("more_data", [])] if options.get("data") and not args.resume else [
        d.data, *d.more_data]  # fmt: skip
    # several specs: evaluate reads them all from the model's record without --data
    data_option = f" --data {shlex.quote(str(given[0]))}" if len(given) == 1 else ""
    from imgcls.data.splits import read_splits_csv

    # the test split, where the data has one, is the one to judge by
    has_test = any(split == "test" for _, _, split in read_splits_csv(run / "splits.csv"))
    print(f"model: {model}")

    split = " --split test" if has_test else ""
    crops = ""
    if d.detections:  # a model of detection crops is judged on crops
        crops = f" --detections {shlex.quote(str(options.get('detections') or d.detections))}"
        crops += f" --det-categories {d.det_categories}"
    print(f"evaluate it: imgcls evaluate --model {shlex.quote(str(model))}{data_option}{crops}{split}")
    return 0


def _allow_train_pixels(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """This process is the command's own: let Pillow open what --max-pixels allows (from the
    command line, the --config file or, on --resume, the run's config.yaml)."""
    from pathlib import Path

    import yaml

    from imgcls.data.image import MAX_PIXELS, allow_pixels

    limit = options.get("max_pixels")
    for source in ([Path(args.config)] if args.config else []) + (
        [Path(args.out) / "config.yaml"] if getattr(args, "resume", False) and args.out else []
    ):
        if limit is None and source.is_file():
            try:
                saved = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue  # the training command reports it
            if isinstance(saved, dict):
                section = saved.get("data")
                limit = (section if isinstance(section, dict) else saved).get("max_pixels")
    allow_pixels(int(limit) if isinstance(limit, (int, float)) else MAX_PIXELS)


def _set_decision(clf: Any, args: argparse.Namespace) -> None:
    """--threshold, --class-thresholds, --rollup, --blank-threshold -> the classifier's rule."""
    from imgcls.decisions import DecisionRule, parse_class_thresholds

    wanted = args.class_thresholds or args.rollup or args.blank_threshold is not None
    if not wanted:
        return
    if clf.task != "multiclass":
        raise UserError("--class-thresholds, --rollup and --blank-threshold apply to multi-class models")
    clf.decision = DecisionRule(
        clf.label_names,
        threshold=args.threshold if args.threshold is not None else (0.5 if args.rollup else None),
        class_thresholds=parse_class_thresholds(args.class_thresholds, clf.label_names),
        rollup=args.rollup,
        blank_threshold=args.blank_threshold,
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    from imgcls.console import info
    from imgcls.predict import Classifier, run_predict
    from imgcls.predict.choose import engine
    from imgcls.predict.runner import recorded_engine

    n = _check_predict(args)
    keep = recorded_engine(args.out) if args.out and not args.overwrite else None  # a continued output's
    say = info if os.environ.get("RANK", "0") == "0" else None
    backend, precision = engine(args.model, backend=args.backend, precision=args.precision, device=args.device,
                                images=n, keep=keep, say=say)  # fmt: skip
    clf = Classifier.load(args.model, device=args.device, precision=precision, backend=backend)
    _set_decision(clf, args)
    common = dict(
        top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
        show_progress=args.out is not None, resume=not args.overwrite, decoder=args.decoder,
    )  # fmt: skip
    if _camera_trap_steps(args):
        summary = _predict_camera_traps(clf, args, common)
    else:
        tta = {"flip": True, "none": False}.get(args.tta)
        if args.shard:  # one of N separate jobs (a SLURM job array's task)
            from imgcls.predict.shards import predict_shard

            summary = predict_shard(clf, args.inputs, out=args.out, shard=args.shard, fmt=args.format,
                                    threshold=args.threshold, tta=tta, **common)  # fmt: skip
        else:
            summary = run_predict(clf, args.inputs, out=args.out, fmt=args.format, threshold=args.threshold,
                                  tta=tta, **common)  # fmt: skip
    note = summary.left_out_note()
    if args.out and os.environ.get("RANK", "0") == "0":
        done = f", {summary.skipped_done} already done" if summary.skipped_done else ""
        sys.stderr.write(
            f"predicted {summary.written} images{done} ({summary.errors} unreadable) in "
            f"{summary.seconds:.1f}s ({summary.images_per_second:.1f} img/s, {clf.engine}) -> {args.out}"
            f"{' (shard {}/{})'.format(*args.shard) if args.shard else ''}"
            f"{'; ' + note if note else ''}\n"
        )
    elif note:
        sys.stderr.write(f"imgcls predict: {note}\n")
    return 0


def _camera_trap_steps(args: argparse.Namespace) -> bool:
    """Whether predict runs the camera-trap steps (crops, events, their formats)."""
    return bool(args.detections) or args.aggregate != "none" or args.format in ("megadetector", "camtrapdp")


def _check_predict(args: argparse.Namespace) -> int:
    """Every mistake that can be seen before the model loads (options, the model's and the
    inputs' existence, the output's location); the inputs counted up to FEW_IMAGES + 1 (enough
    to tell whether measuring the engines is worth it)."""
    import itertools
    from pathlib import Path

    from imgcls.cli.options import sequence_gap
    from imgcls.io import check_writable
    from imgcls.predict import check_inputs, iter_inputs
    from imgcls.predict.choose import FEW_IMAGES
    from imgcls.predict.inputs import check_output_apart
    from imgcls.ranks import tell_refusal

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UserError("--threshold must be between 0 and 1")
    args.sequence_gap = sequence_gap(args)
    if not Path(args.model).exists():
        raise UserError(f"model not found: {args.model} (expected a model directory or an .onnx file)")
    check_inputs(args.inputs)
    _check_shard(args)
    if _camera_trap_steps(args):
        from imgcls.cameratrap.pipeline import require_single_process

        require_single_process()  # every rank refuses before rank 0 alone checks --out below
    if args.out:
        check_output_apart(args.inputs, args.out)
        try:
            check_writable(args.out, folder=args.format == "camtrapdp")  # rank 0 alone under torchrun
        except UserError as e:
            tell_refusal("cpu", str(e))  # predict's group is gloo's
            raise
    n = sum(1 for _ in itertools.islice(iter_inputs(args.inputs), FEW_IMAGES + 1))
    if n == 0:
        raise UserError(f"no files found in {' '.join(args.inputs)} (folders, globs and lists were all empty)")
    return n


def _check_shard(args: argparse.Namespace) -> None:
    """``--shard K/N`` parsed into (K, N); it needs a file to put its part beside and whole-file
    prediction (the camera-trap steps see every image of a sequence at once)."""
    from imgcls.predict.shards import parse_shard

    if not args.shard:
        args.shard = None
        return
    args.shard = parse_shard(args.shard)
    if not args.out:
        raise UserError("--shard needs --out FILE: each shard writes a part beside it and the last merges them")
    if _camera_trap_steps(args):
        raise UserError("--shard splits whole-file prediction; run the camera-trap steps in one job")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--shard is for separate jobs; under torchrun the processes share the inputs already")


def _predict_camera_traps(clf: Any, args: argparse.Namespace, common: dict[str, Any]) -> Any:
    import imgcls.cameratrap.writers  # noqa: F401  (registers the formats)
    from imgcls.cameratrap.pipeline import run

    options = {"utc_offset": args.utc_offset, "deployments": args.deployments, "metadata": args.camtrapdp_metadata}
    return run(
        clf, args.inputs, out=args.out, fmt=args.format, detections_file=args.detections,
        image_root=args.image_root, det_threshold=args.det_threshold, det_categories=args.det_categories,
        crop_margin=args.crop_margin, aggregate=args.aggregate, sequence_gap=args.sequence_gap,
        metadata=args.metadata, writer_options=options, **common,
    )  # fmt: skip


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from imgcls.evaluate import evaluate

    r = evaluate(
        args.model, args.data, split=args.split, out=args.out, image_root=args.image_root,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        precision=args.precision, backend=args.backend, tta={"flip": True, "none": False}.get(args.tta),
        decoder=args.decoder, detections=args.detections,
        det_threshold=args.det_threshold, det_categories=args.det_categories,
        crop_margin=args.crop_margin, corrections=args.corrections, default_out=True,
    )  # fmt: skip
    m = r.metrics
    print(f"{r.task} evaluation on {m['num_images']} images ({r.split}) by {r.engine}, {r.skipped_note}")
    keys = ("top1", "top5", "balanced_accuracy", "macro_f1", "roc_auc", "average_precision", "mAP",
            "micro_f1", "subset_accuracy", "hamming_loss", "nll", "ece")  # fmt: skip
    width = max(len(k) for k in keys)
    for k in keys:
        if isinstance(m.get(k), float):
            print(f"  {k:<{width}}  {m[k]:.4f}")
    groups = m.get("per_location") or []
    if groups:
        print("per location (accuracy, images):")
        for g in groups[:20]:
            print(f"  {g['group']:<{width}}  {g['accuracy']:.4f}  {g['images']}")
        if len(groups) > 20:
            print(f"  ... {len(groups) - 20} more in metrics.json")
    if r.selection_split:
        print(f"note: {r.selection_note}")
    if r.report_dir is not None:
        print(f"report: {r.report_dir / 'report.html'}")
    return 0


# ---------------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    from imgcls.export import export_onnx

    if args.format != "onnx":
        raise UserError(f"unknown export format {args.format!r} (onnx is supported)")
    if args.quantize == "int8":
        if not 0 <= args.max_accuracy_drop <= 100 or args.calibration_images < 1:
            raise UserError("--max-accuracy-drop must be 0-100 points and --calibration-images at least 1")
        if str(args.model).lower().endswith(".onnx"):
            raise UserError("--quantize int8 needs the model directory (its run's images calibrate and measure it)")
    report, source = export_onnx(args.model, args.out, images=args.images, opset=args.opset, tolerance=args.tolerance)
    print(f"wrote {report.path}")
    print(
        f"verified with ONNX Runtime on {report.images} {source}: max |logit diff| "
        f"{report.max_logit_diff:.2e}, max |probability diff| {report.max_prob_diff:.2e}, "
        f"top-1 agreement {100 * report.top1_agreement:.1f}%"
    )
    if args.quantize == "int8":
        from imgcls.quantize import quantize_int8

        q = quantize_int8(args.model, report.path, max_drop=args.max_accuracy_drop,
                          calibration_images=args.calibration_images)  # fmt: skip
        bits = ", 7-bit weights: no VNNI" if q.reduce_range else ""
        print(f"wrote {q.path} (int8, calibrated on {q.calibration_images} training images{bits})")
        print(
            f"validation split, {q.validation_images} images: {q.metric} {q.fp32:.4f} (fp32) -> {q.int8:.4f} (int8), "
            f"{q.drop_points:.2f} points lost; decisions agree on {100 * q.agreement:.1f}%"
        )
    return 0


# ----------------------------------------------------------------------------------------- serve
def _cmd_serve(args: argparse.Namespace) -> int:
    from imgcls.serve.app import ServeConfig, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"imgcls serve: listening on {args.host}: reachable from other machines\n")
    from imgcls.data.image import allow_pixels

    allow_pixels(args.max_pixels)  # this process is the server's own
    cfg = ServeConfig(
        model=args.model, host=args.host, port=args.port, api_key=args.api_key,
        max_upload_mb=args.max_upload_mb, max_files=args.max_files, max_pixels=args.max_pixels,
        cors_origins=args.cors_origin or [], max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        top_k=args.top_k, device=args.device, precision=args.precision, backend=args.backend,
        allowed_hosts=args.allowed_host or [], decoder=args.decoder,
    )  # fmt: skip
    serve(cfg)
    return 0


# ----------------------------------------------------------------------------------------- cache
def _cmd_cache(args: argparse.Namespace) -> int:
    import time

    from imgcls.data.store import cache_entries, default_cache_dir, remove_entries
    from imgcls.engine.budget import parse_duration

    folder = args.cache_dir or str(default_cache_dir())
    entries = cache_entries(folder)
    if args.action == "info":
        total = sum(e.bytes for e in entries)
        print(f"{folder}: {len(entries)} entries, {total / 1e9:.2f} GB (training keeps it under --cache-max-gb, 50)")
        for e in entries:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            what = f"{e.images} images of {e.side}x{e.side} px" if e.images else "unfinished write"
            print(f"  {e.key}  {e.bytes / 1e6:9.1f} MB  used {used}  {what}  from {e.data}")
        return 0
    if args.older_than:
        cutoff = time.time() - parse_duration(args.older_than)
        entries = [e for e in entries if e.last_used < cutoff]
    freed = remove_entries(entries)
    print(f"removed {len(entries)} entries ({freed / 1e9:.2f} GB) from {folder}")
    return 0


# ------------------------------------------------------------------------------------------ demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from imgcls.demo import run_demo

    run_demo(out=args.out)
    return 0
