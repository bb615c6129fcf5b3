"""Run plans and stage calls for the DAGs (:mod:`.pipeline`, no Airflow import) and the
Airflow helpers the DAG files use (:mod:`.airflow_support`)."""
