"""What a run shows: MLflow (``tracker``), the job's console lines (``console``), the
per-question pictures (``question_plots``), the rollout/learning timeline (``timeline``) and
the Grafana board of its Ray gauges (``monitoring``)."""
