"""The Kubeflow pipeline's Python side, above every phase and below the CLI:

- `steps`: what each KFP component (components/) calls: config of a step, its tracker and store, the
  verify/rl steps, lineage, the parent run's open/close;
- `compile`: compiling pipelines/protege_pipeline.py, submitting and scheduling runs on a KFP cluster;
- `local`: the whole pipeline under kfp.local (`protege run` / `protege demo`);
- `placement`: which node pool, resources, secrets and retries each step gets;
- `summary`: the table printed at the end of a local run.
"""
