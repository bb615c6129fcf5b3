"""vqrec_nightly: clean, encode, codes, pretrain, finetune per domain, evaluate, register,
batch recommendations.

Thin wiring only: the work is vqrec.orchestration.pipeline (tested on its own) and the Spark
jobs in jobs/.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AssetAlias, Param, dag, task

from vqrec.core.code_strategy import STRATEGIES
from vqrec.orchestration import airflow_support, pipeline
from vqrec.orchestration.airflow_support import (
    CLEAN_ALIAS,
    DEFAULT_PARAMS,
    GPU_POOL,
    GPU_QUEUE,
    NIGHTLY_SCHEDULE,
    RETRY_ARGS,
    encode_job,
    plan_xcom,
    recommend_job,
    spark_job,
)

DOC = """
### VQ-Rec nightly retrain

Cleans every domain of the raw snapshot of the run's date (Spark), encodes item text
(Spark + sentence-transformers, cached), fits OPQ codes (faiss), pre-trains the shared
backbone on `pretrain_domains`, fine-tunes one lookup table per target domain (one mapped
task each, so one domain's failure keeps the others), evaluates (full ranking) and
registers `vqrec-backbone` and `vqrec-<domain>` in MLflow as *challenger*, promoting to
*champion* only when test NDCG@10 is not worse, then writes each target domain's batch
recommendations (the champion's top-`recommend_k` per user) to the lake.

`cadence=incremental` (the default once a champion backbone exists) skips the refit and
the pre-training: the champion's frozen quantizers code the new snapshot and each domain's
lookup table is warm-started from its champion for a bounded number of epochs.
`cadence=refresh` is the full run above (e.g. weekly, or when the run's drift report
recommends it).

Every task writes the lake version of the run's logical date: re-running a date replaces
that date's outputs with identical data; backfills (`airflow backfill create`) each write
their own date. GPU steps run in pool/queue `gpu`.
"""


@dag(
    dag_id="vqrec_nightly",
    schedule=NIGHTLY_SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["vqrec"],
    default_args=RETRY_ARGS,
    params={
        "raw_root": Param(
            DEFAULT_PARAMS["raw_root"],
            type="string",
            description="Raw data root: domain folders, or dt=YYYY-MM-DD snapshots of them",
        ),
        "lake": Param(DEFAULT_PARAMS["lake"], type="string", description="Lake root"),
        "domains": Param(
            DEFAULT_PARAMS["domains"],
            type="array",
            description="Domains to clean and encode (empty: every folder)",
        ),
        "pretrain_domains": Param(DEFAULT_PARAMS["pretrain_domains"], type="array"),
        "target_domains": Param(
            DEFAULT_PARAMS["target_domains"],
            type="array",
            description="Domains that get a lookup table (empty: pretrain_domains)",
        ),
        "cadence": Param(
            "incremental",
            enum=list(pipeline.CADENCES),
            description="incremental: frozen codes, no pre-training, each domain warm-started "
            "from its champion; refresh: refit codes, pre-train, re-tune (also chosen when "
            "there is no champion backbone yet)",
        ),
        "code_strategy": Param(DEFAULT_PARAMS["code_strategy"], enum=list(STRATEGIES)),
        "hyper": Param(
            DEFAULT_PARAMS["hyper"],
            type="object",
            description="Training hyper-parameters (epochs, batch_size, ...)",
        ),
        "recommend_k": Param(
            10,
            type="integer",
            minimum=1,
            maximum=1000,
            description="Batch recommendations: items per user (already-seen items left out)",
        ),
    },
)
def vqrec_nightly():
    @task
    def plan(params=None, logical_date=None, run_id=None) -> dict:
        """Validate params, pick the raw snapshot and the run's lake version."""
        date = logical_date.isoformat() if logical_date else None
        return pipeline.plan_run(params, logical_date=date, run_id=run_id).to_dict()

    the_plan = plan()

    clean_args = ["--raw-root", plan_xcom("raw_root"), "--domains", plan_xcom("domains", True)]
    clean_args += ["--lake", plan_xcom("lake"), "--version", plan_xcom("version")]
    clean = spark_job(
        "clean",
        "clean.py",
        clean_args,
        "Spark: raw logs -> deduplicated, k-cored interactions, leave-one-out splits, "
        "item text, quarantine and quality report (jobs/clean.py).",
    )
    encode = encode_job(
        "Spark + sentence-transformers: item text -> embeddings, cached by text hash "
        "(jobs/encode.py)."
    )

    @task(outlets=[AssetAlias(CLEAN_ALIAS)])
    def publish_clean_assets(plan: dict, *, outlet_events=None) -> list[str]:
        """Emit one asset event per cleaned domain (see docs/ORCHESTRATION.md)."""
        return airflow_support.publish_clean_assets(plan, outlet_events)

    @task(pool=GPU_POOL, queue=GPU_QUEUE)
    def codes(plan: dict) -> dict:
        """faiss OPQ: fit the pre-training quantizer (strict) and code every domain
        (incremental: the champion's frozen quantizers code every item, nothing is refitted)."""
        return pipeline.code_domains(plan)

    @task(pool=GPU_POOL, queue=GPU_QUEUE, execution_timeout=timedelta(hours=6))
    def pretrain(plan: dict, codes_info: dict) -> dict:
        """Pre-train the shared backbone on the pre-training domains (contrastive); an
        incremental run keeps the champion backbone and returns at once."""
        return pipeline.run_pretrain(plan)

    @task
    def targets(plan: dict) -> list[str]:
        """The domains that get a lookup table: one mapped finetune task each."""
        return plan["target_domains"]

    @task(pool=GPU_POOL, queue=GPU_QUEUE, execution_timeout=timedelta(hours=3))
    def finetune(domain: str, plan: dict, backbone: dict) -> dict:
        """Transfer the frozen backbone to one domain: align its codes with the pre-trained
        table (matched assignment), then fine-tune its lookup table; early-stopped on valid
        NDCG@10, tested on test. Incremental: warm-started from the domain's champion, for a
        bounded number of epochs."""
        return pipeline.run_finetune(plan, domain)

    @task(trigger_rule="all_done")
    def evaluate(plan: dict, results: list[dict]) -> dict:
        """Collect the per-domain test metrics (domains whose fine-tune failed are listed)."""
        return pipeline.collect_results(plan, list(results))

    @task
    def register(plan: dict, summary: dict) -> dict:
        """MLflow: log the run, register challengers (the backbone only when it was
        pre-trained), promote champions that are not worse."""
        return pipeline.register_run(plan, summary)

    recommend = recommend_job(
        "Spark: each target domain's champion, top-k for every user's latest history, "
        "already-seen items left out -> recommendations/<version> (jobs/recommend.py)."
    )

    codes_info = codes(the_plan)
    backbone = pretrain(the_plan, codes_info)
    tuned = finetune.partial(plan=the_plan, backbone=backbone).expand(domain=targets(the_plan))
    summary = evaluate(the_plan, tuned)
    the_plan >> clean >> [encode, publish_clean_assets(the_plan)]
    encode >> codes_info
    register(the_plan, summary) >> recommend


vqrec_nightly()
