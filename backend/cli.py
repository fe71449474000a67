"""`prodsearch` command line: thin dispatch. Heavy imports (torch, models, stores) happen inside
the commands that need them, so client commands stay fast."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.domain.match_calibration import CalibrationReport, MatchCalibrator

log = logging.getLogger("prodsearch")


def _settings(args: argparse.Namespace) -> Settings:
    from backend.config import load_settings

    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "port", None) is not None:
        overrides["grpc_port"] = args.port
    settings = load_settings(**overrides)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_format == "json":
        from backend.metrics import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    return settings


# ---------------------------------------------------------------- server-side commands
# Each gets the settings, then what it uses from the composition root (backend/app.py):
# `build_app` for the whole app, `AppParts` for only the parts a command touches.


def cmd_migrate(args: argparse.Namespace) -> int:
    from backend.app import migrate_database

    downgrade = args.downgrade or args.revision.startswith("-")
    revision = migrate_database(_settings(args), args.revision, downgrade)
    print(f"database at revision {revision}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from backend.app import build_app
    from backend.transport.grpc.server import serve_forever

    app = build_app(_settings(args))
    try:
        asyncio.run(serve_forever(app))
    finally:
        app.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from backend.app import make_local_encoder
    from backend.transport.grpc.encoder_service import EncoderServer, serve_worker

    settings = _settings(args)
    worker = make_local_encoder(settings)
    server = EncoderServer(
        worker,
        args.host or settings.grpc_host,
        settings.encoder.worker_port if args.port is None else args.port,
        max_image_bytes=settings.search.max_image_bytes,
        max_image_pixels=settings.search.max_image_pixels,
        runtime=worker.encoder.runtime,
    )
    asyncio.run(serve_worker(server))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.app import AppParts
    from backend.domain.ingest import ingest_file
    from backend.errors import StoreBusy

    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path} not found", file=sys.stderr)
        return 2
    with AppParts(settings) as app:
        total = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        with tqdm(total=total, desc="catalog", unit="line") as bar:
            report = ingest_file(path, app.catalog, progress=bar.update,
                                 roots=settings.images.roots,
                                 max_image_bytes=settings.images.max_file_bytes)
        for bad in report.bad:
            print(f"line {bad.line}: skipped: {bad.reason}", file=sys.stderr)
        print(f"{report.lines} lines: {report.changed} new or changed, {report.unchanged} "
              f"unchanged, {len(report.bad)} skipped; catalog version {report.catalog_version}")
        status = 0 if not report.bad else 1
        pending = app.catalog.pending_count()
        if pending == 0:
            print("index is up to date")
            return status
        try:
            vectors = app.vectors
        except StoreBusy:
            print(f"{pending} products queued; the running server indexes them")
            return status
        app.encoder.start()
        app.ensure_collection()
        with tqdm(total=pending, desc="index", unit="product") as bar:
            stats = app.indexer.drain(settings.indexer_batch, progress=bar.update)
        vectors.build_index(vectors.resolve(settings.collection))
        print(
            f"indexed {stats.upserted_products} products ({stats.upserted_points} vectors), "
            f"{stats.deleted_products} removed, {stats.image_errors} unreadable images"
        )
        if not args.no_calibrate:
            _refresh_calibration(app.calibrator)
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    import os

    from backend.demo import run_demo
    from backend.demo_catalog import ImagesMissing

    settings = _settings(args)
    if "PRODSEARCH_AUTH__ENABLED" not in os.environ:
        # The embedded demo answers the README's client commands without a key; `serve`
        # requires keys. The server logs a warning whenever auth is off.
        settings = settings.model_copy(
            update={"auth": settings.auth.model_copy(update={"enabled": False})})
    try:
        return run_demo(settings, products=args.products, serve=not args.exit)
    except ImagesMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_keys(args: argparse.Namespace) -> int:
    from backend.app import AppParts
    from backend.security import ApiKeys

    with AppParts(_settings(args)) as app:
        keys = ApiKeys(app.catalog)
        if args.keys_command == "create":
            created = keys.create(args.role, args.merchant, args.warehouse)
            p = created.principal
            print(f"created key {created.key_id}: role {p.role.value}, merchants "
                  f"{','.join(p.merchants) or '-'}, warehouses {','.join(p.warehouses) or '-'}"
                  "; it is shown only now: store it safely", file=sys.stderr)
            print(created.key)
            return 0
        if args.keys_command == "revoke":
            if keys.revoke(args.key_id):
                print(f"revoked key {args.key_id}")
                return 0
            print(f"error: no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"{'id':>4}  {'role':<10} {'merchants':<20} {'warehouses':<20} created"
              f"{'  revoked' if args.all else ''}")
        for row in app.catalog.list_api_keys(include_revoked=args.all):
            revoked = f"  {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else ""
            print(f"{row.id:>4}  {row.role:<10} {row.merchant or '-':<20} "
                  f"{row.warehouse or '-':<20} {row.created_at:%Y-%m-%d %H:%M}{revoked}")
        return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from backend.app import AppParts
    from backend.domain.reconcile import Reconciler
    from backend.domain.types import Product

    settings = _settings(args)
    with AppParts(settings) as app:
        # The catalog first, then the vector store: StoreBusy while a server owns the shard.
        reconciler = Reconciler(app.catalog, app.vectors, settings.collection,
                                app.encoder.model_version, app.photo)
        report = reconciler.check()
        print(("before: " if args.fix else "") + report.summary())
        if not args.fix:
            return 0 if report.differences == 0 else 1

        def index(collection: str, products: list[Product]) -> None:
            app.encoder.start()
            app.indexer.index_products(collection, products)

        after = reconciler.fix(report, index)
        print("after:  " + after.summary())
        return 0 if after.differences == 0 else 1


def cmd_reindex(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from backend.app import AppParts, baseline_encoder
    from backend.domain.reindex import built_by, safe_version, write_report

    settings = _settings(args)
    with AppParts(settings) as app:
        # The encoder first: a wrong --model is refused before anything is opened.
        version = app.encoder.model_version
        if args.model and safe_version(args.model) != safe_version(version):
            print(f"error: the configured encoder is model version {version!r}, not "
                  f"{args.model!r}: set PRODSEARCH_ENCODER__TEXT_MODEL / __FUSION_CHECKPOINT "
                  "(the same settings the servers will run with)", file=sys.stderr)
            return 2
        alias = settings.collection
        current = app.vectors.resolve(alias)  # StoreBusy while a server owns the shard
        if (current != alias and not args.rebuild
                and built_by(alias, current) == safe_version(version)):
            print(f"{alias!r} -> {current} is already built by {version}; "
                  "nothing to do (--rebuild builds it again)")
            return 0
        baseline = baseline_encoder(settings, current) if current != alias else None
        with tqdm(desc="reindex", unit="product") as bar:

            def set_total(n: int) -> None:
                bar.total = n
                bar.refresh()

            result = app.reindexer.run(
                force=args.force, margin=args.margin, sample=args.sample,
                baseline_encoder=baseline, keep_old=args.keep_old, grace_s=args.grace,
                progress=bar.update, total=set_total)
        if result.switched:
            app.encoder.start()  # idempotent: the new model version needs its calibration
            _refresh_calibration(app.calibrator)
    write_report(result, settings.data_dir / "reindex" / f"{result.new}.json")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        for label, q in (("current", result.old_quality), ("new", result.new_quality)):
            if q is not None:
                print(f"{label:>7}: photo Recall@1 {q.photo_recall_at_1:.3f}, "
                      f"title Recall@5 {q.text_recall_at_5:.3f} ({q.sample} products)")
        for note in result.notes:
            print(f"note: {note}")
        print(f"{result.products} products, {result.points} vectors, {result.replayed} "
              f"changed during the build; {result.message} ({result.seconds:.0f} s)")
    return 0 if result.switched else 1


def cmd_eval(args: argparse.Namespace) -> int:
    if args.task == "match":
        return _eval_match(args)
    from encoders.evaluation.runner import run_from_args

    text_retrieval = None
    if args.task in ("text", "all"):
        # Lexical, dense and hybrid rows through the vector store, beside the encoder rows.
        from backend.text_eval import hybrid_rows
        text_retrieval = hybrid_rows
    return run_from_args(args, text_retrieval)


def _eval_match(args: argparse.Namespace) -> int:
    """Calibrate matching on the catalog in the data folder and print precision / recall /
    F1 per verdict on held-out items, for easy and hard photos, before (dense photo path,
    easy pairs only) and after."""
    import json

    from tqdm import tqdm

    from backend.app import build_app

    app = build_app(_settings(args))
    try:
        app.encoder.start()
        with tqdm(desc="match listings", unit="listing") as bar:
            # --seed N samples the N-th block of items (seed 0: the first), with other
            # listings: a dev run never shares items with the reported one.
            report = app.calibrator.calibrate(args.limit or 200, seed=17 + args.seed,
                                              progress=bar.update, baseline=app.dense_match(),
                                              skip=args.seed * (args.limit or 200))
    finally:
        app.close()
    out = Path(args.out) / "match"
    out.mkdir(parents=True, exist_ok=True)
    cases = out / f"match_cases_seed{args.seed}.json"
    cases.write_text(json.dumps(report.cases, ensure_ascii=False), encoding="utf-8")
    print(f"held-out prediction of every listing: {cases}", file=sys.stderr)
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=None if args.json else 2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from backend.app import build_app
    from backend.domain.match_calibration import NotEnoughProducts

    app = build_app(_settings(args))
    try:
        calibrator = app.calibrator
        status = calibrator.status()
        if not status.stale and not args.force:
            print(f"match calibration {status.path}: {status.reason}; nothing to do "
                  "(--force fits it again)")
            return 0
        app.encoder.start()
        report = calibrator.calibrate(args.items)
    except NotEnoughProducts as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        app.close()
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        _print_calibration(report)
    return 0


def _print_calibration(report: CalibrationReport) -> None:
    for skipped in report.skipped:
        print(f"skipped {skipped.sku} ({skipped.uri}): {skipped.reason}", file=sys.stderr)
    f1 = ", ".join(f"{name} photos SAME F1 {report.f1('SAME', name):.2f}"
                   for name in report.conditions)
    print(f"match calibration written to {report.path}: {report.items} items, "
          f"{len(report.skipped)} images skipped; held out: {f1}")


def _refresh_calibration(calibrator: MatchCalibrator) -> None:
    """After ingest and reindex: fit the match calibration again when it is stale."""
    from backend.domain.match_calibration import NotEnoughProducts

    try:
        report = calibrator.refresh()
    except NotEnoughProducts as exc:
        print(f"match calibration not refreshed: {exc}", file=sys.stderr)
        return
    if report is None:
        print("match calibration is up to date")
    else:
        _print_calibration(report)


def cmd_train(args: argparse.Namespace) -> int:
    from encoders.training.cli import run_from_args as train_from_args

    return train_from_args(args)


# ---------------------------------------------------------------- client commands


def cmd_dedup(args: argparse.Namespace) -> int:
    from collections import Counter

    from tqdm import tqdm

    from backend.app import build_app
    from backend.domain.dedup import find_duplicates

    settings = _settings(args)
    app = build_app(settings)
    try:
        calibration = app.match.calibration().blind()  # catalog pairs: no photo verified
        with tqdm(desc="dedup", unit="product") as bar:
            run_id, rows = find_duplicates(app.catalog, app.vectors, settings.collection,
                                           calibration, args.merchant, progress=bar.update)
    finally:
        app.close()
    counts = Counter(r.status for r in rows)
    groups = {r.group_id for r in rows if r.group_id}
    print(f"dedup run {run_id}: {len(groups)} groups ({counts['group']} strong pairs), "
          f"{counts['review']} pairs for review (table dedup_reviews)")
    for row in rows[: args.show]:
        print(f"  {row.status:<6} p={row.probability:.2f} {row.product_a} ~ {row.product_b}: "
              f"{row.evidence['reason']}")
    return 0


def _client_call(render: Callable[[], str]) -> int:
    """Run a client command: print what it renders, or a one-line error and an exit code
    (2: bad local input, 1: the server said no)."""
    import grpc

    try:
        print(render())
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


_ALL_FACETS = ["category", "size", "material", "colour", "brand", "merchant", "price"]


def _facet_keys(given: list[str]) -> list[str]:
    keys = [f.strip() for f in ",".join(given).split(",") if f.strip()]
    return _ALL_FACETS if "all" in keys else keys


def cmd_search(args: argparse.Namespace) -> int:
    from backend.transport.grpc import client

    def render() -> str:
        request = client.build_search_request(
            image=Path(args.image) if args.image else None,
            text=args.text or "",
            product_id=args.product_id or "",
            category=args.category or "",
            where=client.parse_where(args.where),
            min_price=args.min_price,
            max_price=args.max_price,
            in_stock=args.in_stock,
            top_k=args.top_k,
            diversify=args.diversify,
            explain=args.explain,
            facets=_facet_keys(args.facets),
        )
        response = client.search(args.addr or client.default_addr(), request, args.timeout)
        return client.search_json(response) if args.json else client.search_table(response)

    return _client_call(render)


def cmd_match(args: argparse.Namespace) -> int:
    from backend.transport.grpc import client

    def render() -> str:
        response = client.match(
            args.addr or client.default_addr(),
            images=[Path(p) for p in args.image],
            title=args.title or "", size=args.size or "", material=args.material or "",
            colour=args.colour or "", brand=args.brand or "", top_k=args.top_k,
            timeout=args.timeout,
        )
        return client.match_json(response) if args.json else client.match_table(response)

    return _client_call(render)


def cmd_restock(args: argparse.Namespace) -> int:
    from backend.transport.grpc import client

    def render() -> str:
        response = client.restock(
            args.addr or client.default_addr(), Path(args.image), args.warehouse,
            args.bin or "", args.top_k, args.timeout)
        return client.restock_json(response) if args.json else client.restock_table(response)

    return _client_call(render)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prodsearch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        return p

    def server_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="data folder (PRODSEARCH_DATA_DIR)")
        p.add_argument("--port", type=int, help="gRPC port (PRODSEARCH_GRPC_PORT)")

    p = add("demo", cmd_demo, "build a catalog from real images, index it, serve, search")
    server_opts(p)
    p.add_argument("--products", type=int, default=800, help="catalog size (default 800)")
    p.add_argument("--exit", action="store_true", help="exit after the example searches")

    p = add("serve", cmd_serve, "run the gRPC server")
    server_opts(p)

    p = add("worker", cmd_worker, "run an encoder worker (Encoder gRPC service)")
    p.add_argument("--host", help="listen address (PRODSEARCH_GRPC_HOST)")
    p.add_argument("--port", type=int,
                   help="gRPC port (PRODSEARCH_ENCODER__WORKER_PORT, default 50061)")

    p = add("ingest", cmd_ingest, "load a JSONL catalog file and index it")
    server_opts(p)
    p.add_argument("file")
    p.add_argument("--no-calibrate", action="store_true",
                   help="leave a stale match calibration for later (`prodsearch calibrate`), "
                   "e.g. while loading a catalog in several files")

    p = add("migrate", cmd_migrate, "apply database migrations (alembic upgrade)")
    server_opts(p)
    p.add_argument("revision", nargs="?", default="head")
    p.add_argument("--downgrade", action="store_true", help="downgrade to the revision")

    p = add("keys", cmd_keys, "create, revoke and list API keys")
    ks = p.add_subparsers(dest="keys_command", required=True)
    k = ks.add_parser("create", help="create a key (printed once, on stdout)")
    k.add_argument("--role", required=True, choices=["storefront", "warehouse", "admin"])
    k.add_argument("--merchant", action="append", default=[],
                   help="storefront scope: also sees this merchant's unlisted products")
    k.add_argument("--warehouse", action="append", default=[],
                   help="warehouse scope: may update stock here (required for warehouse)")
    k = ks.add_parser("revoke", help="revoke a key by id")
    k.add_argument("key_id", type=int)
    k = ks.add_parser("list", help="list keys (never the keys themselves)")
    k.add_argument("--all", action="store_true", help="include revoked keys")
    for k in ks.choices.values():
        server_opts(k)

    p = add("reconcile", cmd_reconcile, "compare SQL and the vector store; --fix repairs")
    server_opts(p)
    p.add_argument("--fix", action="store_true", help="repair the differences found")

    p = add("reindex", cmd_reindex,
            "build a collection for the configured model, check it, switch the alias to it")
    server_opts(p)
    p.add_argument("--model", metavar="VERSION",
                   help="expected model version: refuse unless the configured encoder "
                        "(PRODSEARCH_ENCODER__TEXT_MODEL, __FUSION_CHECKPOINT) is this one")
    p.add_argument("--force", action="store_true",
                   help="switch even when recall drops by more than the margin")
    p.add_argument("--margin", type=float, default=0.02,
                   help="largest recall drop accepted (default 0.02)")
    p.add_argument("--sample", type=int, default=50,
                   help="products in the quick retrieval check (default 50)")
    p.add_argument("--rebuild", action="store_true",
                   help="build again even if the current collection has this model version")
    p.add_argument("--keep-old", action="store_true", help="keep the old collection")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds between the switch and dropping the old collection")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("calibrate", cmd_calibrate,
            "fit the match calibration on the catalog when it is stale (or --force)")
    server_opts(p)
    p.add_argument("--items", type=int, default=120,
                   help="catalog products sampled (8 labelled listings each; default 120)")
    p.add_argument("--force", action="store_true", help="fit it even when it is current")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("eval", cmd_eval, "retrieval benchmarks on real images (JSON + Recall@K plot)")
    from encoders.evaluation.runner import add_arguments as eval_arguments

    eval_arguments(p, extra_tasks=("match",))
    p.add_argument("--data-dir", help="data folder holding the catalog (task match)")

    p = add("train", cmd_train, "train the fusion model (backbones frozen, cached features)")
    from encoders.training.cli import add_arguments as train_arguments

    train_arguments(p)

    p = add("search", cmd_search, "search a running server")
    q = p.add_mutually_exclusive_group(required=False)
    p.add_argument("--image", help="query photo")
    q.add_argument("--text", help="query text (English or Chinese)")
    q.add_argument("--product-id", help="more like this product")
    p.add_argument("--category", help="category path prefix, e.g. animals/birds")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                   help="size, material, colour, brand or merchant; repeatable")
    p.add_argument("--min-price", type=float)
    p.add_argument("--max-price", type=float)
    p.add_argument("--in-stock", action="store_true")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--diversify", action="store_true", help="diverse results (MMR)")
    p.add_argument("--explain", action="store_true",
                   help="print each hit's score parts (dense text, lexical, exact, ranks)")
    p.add_argument("--facets", action="append", default=[], metavar="KEYS",
                   help="facet counts: comma-separated category,size,material,colour,brand,"
                        "merchant,price (or 'all'); repeatable")
    p.add_argument("--addr", help="server host:port (default 127.0.0.1:50051)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = add("dedup", cmd_dedup, "find listings that are the same product across merchants")
    server_opts(p)
    p.add_argument("--merchant", help="only listings of this merchant as sources")
    p.add_argument("--show", type=int, default=20, help="pairs to print")

    p = add("match", cmd_match, "is this listing a product already in the catalog?")
    p.add_argument("--image", action="append", default=[], required=True,
                   help="listing photo; repeatable")
    p.add_argument("--title")
    p.add_argument("--size")
    p.add_argument("--material")
    p.add_argument("--colour", "--color", dest="colour")
    p.add_argument("--brand")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--addr", help="server host:port (default 127.0.0.1:50051)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = add("restock", cmd_restock, "which SKUs does this shelf photo show, and their stock?")
    p.add_argument("--image", required=True, help="shelf photo")
    p.add_argument("--warehouse", required=True)
    p.add_argument("--bin", help="only this bin's stock")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--addr", help="server host:port (default 127.0.0.1:50051)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from backend.errors import DomainError

        if isinstance(exc, DomainError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
