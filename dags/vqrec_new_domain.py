"""vqrec_new_domain: bring one new domain online on the champion backbone (no retrain).

Thin wiring only: the work is vqrec.orchestration.pipeline and the Spark jobs in jobs/.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

from vqrec.core.code_strategy import STRATEGIES
from vqrec.orchestration import pipeline
from vqrec.orchestration.airflow_support import (
    DEFAULT_PARAMS,
    GPU_POOL,
    GPU_QUEUE,
    RAW_LANDING_URI,
    RETRY_ARGS,
    plan_xcom,
    spark_job,
)

DOC = """
### VQ-Rec new-domain backfill

Brings a new product domain online **without retraining the backbone**: cleans and
encodes that domain (one Spark application), codes its items (strategy `shared`: the
champion backbone's frozen pre-training quantizer; `domain`: its own strict quantizer,
aligned with the pre-trained table by the matched assignment, no training), fine-tunes its
lookup table on the champion backbone (Transformer frozen), evaluates it (full ranking)
and registers `vqrec-<domain>` (challenger, promoted to champion when not worse).

Trigger it by hand with the form (domain name, raw folder, layout), or let it run when the
asset `vqrec://raw/landed` is updated with `extra={"domain": ..., "raw_path": ...}`
(see docs/ORCHESTRATION.md).
"""


@dag(
    dag_id="vqrec_new_domain",
    schedule=[Asset(RAW_LANDING_URI)],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=DOC,
    tags=["vqrec"],
    default_args=RETRY_ARGS,
    params={
        "domain": Param("", type="string", description="Domain id (the raw folder's name)"),
        "raw_path": Param("", type="string", description="Folder with the domain's raw files"),
        "layout": Param("auto", enum=["auto", "amazon", "generic"]),
        "lake": Param(DEFAULT_PARAMS["lake"], type="string"),
        "code_strategy": Param(
            DEFAULT_PARAMS["code_strategy"],
            enum=list(STRATEGIES),
            description="shared: the champion's frozen quantizer; domain: its own strict one",
        ),
        "hyper": Param(DEFAULT_PARAMS["hyper"], type="object"),
    },
)
def vqrec_new_domain():
    @task
    def plan(params=None, logical_date=None, run_id=None, triggering_asset_events=None) -> dict:
        """Validate the form (or the landing asset's extra) and find the champion backbone."""
        date = logical_date.isoformat() if logical_date else None
        landed = pipeline.landing_event_params(triggering_asset_events)
        return pipeline.plan_new_domain({**params, **landed}, date, run_id).to_dict()

    the_plan = plan()
    clean_encode = spark_job(
        "clean_encode",
        "clean.py",
        [
            "--raw",
            plan_xcom("raw_root"),
            "--layout",
            plan_xcom("layout"),
            "--lake",
            plan_xcom("lake"),
            "--version",
            plan_xcom("version"),
            "--no-move-current",
            "--encode",
        ],
        "Spark: clean the new domain only, then encode its item text reusing the embedding "
        "cache, in one Spark application (jobs/clean.py --encode: one JVM start for both, most "
        "of a small domain's cost); CURRENT stays on the nightly's.",
    )

    @task(pool=GPU_POOL, queue=GPU_QUEUE)
    def codes(plan: dict) -> dict:
        """Code the new domain's items with the champion's frozen quantizer (or its own)."""
        return pipeline.code_new_domain(plan)

    @task(pool=GPU_POOL, queue=GPU_QUEUE, execution_timeout=timedelta(hours=3))
    def finetune(plan: dict, codes_info: dict) -> dict:
        """Fine-tune the new domain's lookup table on the frozen champion backbone."""
        return pipeline.run_finetune(plan, plan["target_domains"][0])

    @task
    def evaluate(plan: dict, result: dict) -> dict:
        return pipeline.collect_results(plan, [result])

    @task
    def register(plan: dict, summary: dict) -> dict:
        """Register vqrec-<domain> (the backbone's registered version is left alone)."""
        return pipeline.register_run(plan, summary, backbone=False)

    codes_info = codes(the_plan)
    the_plan >> clean_encode >> codes_info
    register(the_plan, evaluate(the_plan, finetune(the_plan, codes_info)))


vqrec_new_domain()
