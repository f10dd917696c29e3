"""Runbooks shipped with haplane: one YAML file each, `NAME.yaml` here (`kind: Runbook`), run
with `haplane runbook run NAME`. `haplane.local.runbook` loads and checks them,
`haplane.local.runbook_run` runs them, `haplane docs` lists them.

Layer: data (no code: read through `importlib.resources`).
"""
